"""MarkerHeatmap: the top marker genes of each cluster of a hierarchy, and their log-normalised
values in a sample of the clusters' cells; in Cellenics v2, the platform's marker genes alone."""

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import sparse

from worker.compute.rank import NO_GROUP, rank_gene_block
from worker.compute.summary import summary
from worker.compute.wilcoxauc import labelling
from worker.errors import EmptyCellSet, InvalidRequest
from worker.store.cell_sets import CellSets
from worker.store.comparisons import class_children, marker_genes
from worker.store.gene_blocks import map_gene_blocks
from worker.tasks.base import (
    ClusterConfig,
    ClusterMethod,
    Task,
    TaskBody,
    TaskContext,
    V2TaskBody,
)

NOT_IN_HIERARCHY = -1


class MarkerHeatmapBody(TaskBody):
    name: Literal["MarkerHeatmap"]
    nGenes: int = Field(default=5, ge=1, le=100)
    # The clustering that made the hierarchy, as the client shows it: it keys the API's cache;
    # the markers come from the stored hierarchy `cellSetKey` as it is.
    type: ClusterMethod = "louvain"
    config: ClusterConfig = Field(default_factory=ClusterConfig)
    cellSetKey: str = Field(default="louvain", max_length=200)
    maxCells: int = Field(default=1000, ge=1, le=100_000)


def child_labels(cell_sets: CellSets, key: str, n_cells: int) -> np.ndarray:
    """Each cell's child of the hierarchy `key` (the first child holding it), or -1."""
    root = cell_sets.hierarchy(key)
    labels = np.full(n_cells, NOT_IN_HIERARCHY, dtype=np.int64)
    for child, node in reversed(list(enumerate(root.get("children") or []))):
        cell_ids = np.asarray(node.get("cellIds") or [], dtype=np.int64)
        labels[cell_ids[(cell_ids >= 0) & (cell_ids < n_cells)]] = child
    return labels


def one_vs_rest_zscores(
    counts_by_gene_block: sparse.sparray,
    total_counts: np.ndarray,
    labels: np.ndarray,
    children: list[int],
) -> np.ndarray:
    """Wilcoxon z-scores (children x genes) of each child against the hierarchy's other cells."""
    in_hierarchy = labels != NOT_IN_HIERARCHY
    return np.vstack(
        [
            rank_gene_block(
                counts_by_gene_block,
                total_counts,
                labels == child,
                in_hierarchy & (labels != child),
            )["zscore"]
            for child in children
        ]
    )


def even_sample(cell_ids: np.ndarray, size: int) -> np.ndarray:
    """`size` of the ascending `cell_ids`, evenly spaced, each the middle of its stretch."""
    return cell_ids[(2 * np.arange(size) + 1) * len(cell_ids) // (2 * size)]


def proportional_quotas(sizes: np.ndarray, total: int) -> np.ndarray:
    """`total` split in proportion to `sizes` by largest remainders (ties to the first)."""
    if sizes.sum() <= total:
        return sizes
    shares = sizes * total / sizes.sum()
    quotas = np.floor(shares).astype(np.int64)
    by_remainder = np.argsort(-(shares - quotas), kind="stable")
    quotas[by_remainder[: total - quotas.sum()]] += 1
    return quotas


def marker_heatmap(context: TaskContext, body: MarkerHeatmapBody) -> dict:
    store = context.store()
    labels = child_labels(context.cell_sets(), body.cellSetKey, store.n_cells)
    sizes = np.bincount(labels[labels != NOT_IN_HIERARCHY], minlength=labels.max() + 1)
    # A child with no cells, or with all of the hierarchy's cells, has no one-vs-rest ranking.
    ranked_children = [child for child, size in enumerate(sizes) if 0 < size < sizes.sum()]

    marker_indices: dict[int, None] = {}
    if ranked_children:
        zscores = np.hstack(
            map_gene_blocks(store, one_vs_rest_zscores, store.total_counts, labels, ranked_children)
        )
        for child_zscores in zscores:
            top = np.argsort(-child_zscores, kind="stable")[: body.nGenes]
            marker_indices.update(dict.fromkeys(top.tolist()))
    gene_indices = np.array(list(marker_indices), dtype=np.int64)

    cell_order = np.concatenate(
        [
            even_sample(np.flatnonzero(labels == child), quota)
            for child, quota in enumerate(proportional_quotas(sizes, body.maxCells))
        ]
        or [np.zeros(0, dtype=np.int64)]
    )
    values = store.log_normalised(gene_indices)[cell_order].toarray()
    gene_names = store.var["gene_names"].to_numpy()[gene_indices].tolist()
    return {
        "order": gene_names,
        "cellOrder": cell_order.tolist(),
        "data": {
            gene: {"expression": gene_values, **summary(gene_values)}
            for gene, gene_values in zip(gene_names, np.ascontiguousarray(values.T), strict=True)
        },
    }


TASK = Task(name="MarkerHeatmap", body=MarkerHeatmapBody, cacheable=True, compute=marker_heatmap)


class DownsampleSettings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    selectedCellSet: str | None = None


class MarkerHeatmapV2Body(V2TaskBody):
    name: Literal["MarkerHeatmap"]
    # A JSON number in the platform's schema: its whole part is used.
    nGenes: float = Field(ge=1, allow_inf_nan=False)
    # The class whose children are the groups; older API versions sent it as `cellSetKey` or
    # `downsampleSettings.selectedCellSet`.
    selectedCellSet: str | None = None
    cellSetKey: str | None = None
    downsampleSettings: DownsampleSettings | None = None

    def class_key(self) -> str:
        for key in (
            self.selectedCellSet,
            self.cellSetKey,
            self.downsampleSettings and self.downsampleSettings.selectedCellSet,
        ):
            if key is not None:
                return key
        raise InvalidRequest("invalid request: body.selectedCellSet: a cell class is required")


NO_CELLS = "No cells found in the selected cell set."


def marker_heatmap_v2(context: TaskContext, body: MarkerHeatmapV2Body) -> dict:
    """`{orderedGeneNames}`: the platform's top `nGenes` markers of each child of the class,
    children in order (a cell in several children counts in the last)."""
    store = context.store()
    children = class_children(context.cell_sets(), body.class_key(), store.n_cells)
    labels = labelling([cell_ids for _child, cell_ids in children], store.n_cells)
    if np.all(labels == NO_GROUP):
        raise EmptyCellSet(NO_CELLS)
    genes = marker_genes(store, labels, int(body.nGenes))
    names = store.var["gene_names"].to_numpy()[genes]
    return {"orderedGeneNames": list(dict.fromkeys(names))}


V2_TASK = Task(
    name="MarkerHeatmap", body=MarkerHeatmapV2Body, cacheable=True, compute=marker_heatmap_v2
)
