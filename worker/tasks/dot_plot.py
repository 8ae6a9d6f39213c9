"""DotPlot (Cellenics v2): per group of cells and gene, Seurat's scaled average expression and
the percent of cells expressing, for marker genes or genes the user names."""

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from worker.compute.rank import NO_GROUP
from worker.compute.wilcoxauc import labelling, present_groups
from worker.errors import CellSetNotFound
from worker.store.comparisons import class_children, marker_genes
from worker.store.gene_index import matching_ignoring_case
from worker.tasks.base import Task, TaskContext, V2TaskBody

# Seurat's DotPlot clips the scaled averages to this.
SCALE_LIMIT = 2.5
EMPTY = {
    "cellSetsIdx": [],
    "geneNameIdx": [],
    "avgExpression": [],
    "cellsPercentage": [],
    "cellSetsNames": [],
    "geneNames": [],
}


class DotPlotFilter(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    # A class key, or "All" (any case) for every cell.
    group: str
    key: str | None = None


class DotPlotBody(V2TaskBody):
    name: Literal["DotPlot"]
    groupBy: str
    filterBy: DotPlotFilter = DotPlotFilter(group="All")
    useMarkerGenes: bool = False
    numberOfMarkers: int = Field(default=3, ge=1)
    customGenesList: list[str] = Field(default_factory=list)


def make_unique(names: list[str]) -> list[str]:
    """R's `make.unique`: a repeated name gets `.1`, `.2`... the first suffix not yet used."""
    used = set(names)
    seen: set[str] = set()
    next_suffix: dict[str, int] = {}
    unique = []
    for name in names:
        if name not in seen:
            seen.add(name)
            unique.append(name)
            continue
        suffix = next_suffix.get(name, 1)
        while f"{name}.{suffix}" in used:
            suffix += 1
        unique.append(f"{name}.{suffix}")
        used.add(unique[-1])
        next_suffix[name] = suffix + 1
    return unique


def filter_cells(context: TaskContext, filter_by: DotPlotFilter, n_cells: int) -> np.ndarray:
    """Cell ids the plot is restricted to: the set `key` of the class `group`, or every cell."""
    if filter_by.group.lower() == "all":
        return np.arange(n_cells)
    children = class_children(context.cell_sets(), filter_by.group, n_cells)
    cell_ids = next((ids for child, ids in children if child.get("key") == filter_by.key), None)
    if cell_ids is None:
        raise CellSetNotFound(
            f"cell set {filter_by.key!r} does not exist in the class {filter_by.group!r}"
        )
    return cell_ids


def dot_plot(context: TaskContext, body: DotPlotBody) -> dict:
    """Columnar, one entry per group and gene (groups in their class's order, genes in the
    order chosen): indices into the sorted group names and the sorted gene names; an object of
    empty arrays when no group or gene is left."""
    store = context.store()
    children = class_children(context.cell_sets(), body.groupBy, store.n_cells)
    in_filter = np.zeros(store.n_cells, dtype=bool)
    in_filter[filter_cells(context, body.filterBy, store.n_cells)] = True
    labels = labelling([cell_ids for _child, cell_ids in children], store.n_cells)
    labels[~in_filter] = NO_GROUP
    labels, present = present_groups(labels)
    if len(present) == 0:
        return EMPTY
    group_names = np.array(make_unique([child.get("name", "") for child, _ids in children]))
    group_names = group_names[present]

    gene_names = store.var["gene_names"].to_numpy()
    if body.useMarkerGenes:
        genes = marker_genes(store, labels, body.numberOfMarkers)
    else:
        genes = matching_ignoring_case(store, body.customGenesList)
    if len(genes) == 0:
        return EMPTY

    average, percent = group_averages(store.log_normalised(genes), labels, len(present))
    scaled = seurat_scaled(average)
    group_order = np.argsort(group_names, kind="stable")
    gene_order = np.argsort(gene_names[genes], kind="stable")
    group_index = np.empty(len(present), dtype=np.int64)
    group_index[group_order] = np.arange(len(present))
    gene_index = np.empty(len(genes), dtype=np.int64)
    gene_index[gene_order] = np.arange(len(genes))
    return {
        "cellSetsIdx": np.repeat(group_index, len(genes)),
        "geneNameIdx": np.tile(gene_index, len(present)),
        "avgExpression": scaled.ravel(),
        "cellsPercentage": percent.ravel(),
        "cellSetsNames": group_names[group_order],
        "geneNames": gene_names[genes][gene_order],
    }


def group_averages(values, labels: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Seurat's `avg.exp` (the mean of expm1 of the log-normalised values) and `pct.exp` (100
    times the fraction above 0) of each group (rows) and gene (columns), from a cells x genes
    CSC of the genes' values."""
    sizes = np.bincount(labels[labels != NO_GROUP], minlength=n_groups).astype(np.float64)
    gene_of_entry = np.repeat(np.arange(values.shape[1]), np.diff(values.indptr))
    group_of_entry = labels[values.indices]
    grouped = group_of_entry != NO_GROUP
    # Each entry's place in the (group, gene) table, flattened.
    places = group_of_entry[grouped] * values.shape[1] + gene_of_entry[grouped]
    entries = values.data[grouped].astype(np.float64)
    shape = (n_groups, values.shape[1])
    size = n_groups * values.shape[1]
    expm1_sums = np.bincount(places, weights=np.expm1(entries), minlength=size).reshape(shape)
    expressing = np.bincount(places, weights=entries > 0, minlength=size).reshape(shape)
    return expm1_sums / sizes[:, None], 100 * (expressing / sizes[:, None])


def seurat_scaled(average: np.ndarray) -> np.ndarray:
    """Seurat's `avg.exp.scaled`: per gene, log1p of the averages z-scored across groups (sample
    standard deviation; none, NaN, when it is 0) and clipped to +-2.5; for one group, log1p of
    the average, unscaled."""
    logged = np.log1p(average)
    if len(average) == 1:
        return logged
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = (logged - logged.mean(axis=0)) / logged.std(axis=0, ddof=1)
    return np.clip(scaled, -SCALE_LIMIT, SCALE_LIMIT)


V2_TASK = Task(name="DotPlot", body=DotPlotBody, cacheable=True, compute=dot_plot)
