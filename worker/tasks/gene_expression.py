"""GeneExpression: log-normalised (optionally scaled) values of a few genes in selected cells;
in Cellenics v2, a sparse cells x genes matrix of them with the statistics of its colour scale."""

import weakref
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import sparse

from worker.compute.arithmetic import entry_rows, scale, scale_parameters
from worker.compute.summary import expression_stats, sparse_summary, summary
from worker.errors import GeneNotFound, InvalidRequest
from worker.jsonio import Encoded, encoded, joined_array, joined_object
from worker.store.cell_sets import CellSets
from worker.store.experiment import ExperimentStore
from worker.store.gene_index import matching_ignoring_case
from worker.tasks.base import Task, TaskBody, TaskContext, V2TaskBody

MAX_GENES = 1000
MAX_CELL_SETS = 1000
# About 200 MB of JSON: a larger answer would not fit a browser, nor the worker's memory.
MAX_VALUES = 20_000_000

Key = Annotated[str, Field(max_length=200)]


class GeneExpressionBody(TaskBody):
    name: Literal["GeneExpression"]
    genes: list[Key] = Field(min_length=1, max_length=MAX_GENES)
    cellSets: list[Key] = Field(default_factory=list, max_length=MAX_CELL_SETS)
    scale: bool = False


_gene_lookups: "weakref.WeakKeyDictionary[ExperimentStore, dict[str, int]]" = (
    weakref.WeakKeyDictionary()
)
# Every cell's barcode as JSON, per opened store: the largest part of an all-cells answer.
_all_barcodes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def gene_lookup(store: ExperimentStore) -> dict[str, int]:
    """Gene index by name or id (a name wins over another gene's id; the first of equal ids
    wins), built once per opened store."""
    lookup = _gene_lookups.get(store)
    if lookup is None:
        gene_ids = store.var["gene_ids"].tolist()
        lookup = {gene_id: index for index, gene_id in reversed(list(enumerate(gene_ids)))}
        lookup.update((name, index) for index, name in enumerate(store.var["gene_names"]))
        _gene_lookups[store] = lookup
    return lookup


def selected_cells(context: TaskContext, n_cells: int, cell_set_keys: list[str]) -> np.ndarray:
    """Ascending ids of the cells in any of the cell sets; all cells when none is given."""
    if not cell_set_keys:
        return np.arange(n_cells)
    cell_sets = context.cell_sets()
    return np.unique(np.concatenate([cell_sets.ids(key, n_cells) for key in cell_set_keys]))


def barcodes(store: ExperimentStore, cell_ids: np.ndarray):
    """The cells' barcodes, JSON-encodable; all cells' encoded once per opened store."""
    if len(cell_ids) < store.n_cells:
        return store.obs["barcode"].to_numpy()[cell_ids].tolist()
    all_barcodes = _all_barcodes.get(store)
    if all_barcodes is None:
        all_barcodes = _all_barcodes[store] = encoded(store.obs["barcode"].tolist())
    return all_barcodes


def in_cells(log_values: sparse.csc_array, cell_ids: np.ndarray) -> sparse.csc_array:
    """The rows of the cells (ascending ids)."""
    if len(cell_ids) < log_values.shape[0]:
        return sparse.csc_array(log_values[cell_ids])
    return log_values


def scaled(log_values: sparse.csc_array, cell_ids: np.ndarray) -> np.ndarray:
    """The cells' values of each gene (genes x cells) scaled over all cells as scanpy's
    `pp.scale(max_value=10)`."""
    genes = entry_rows(log_values.indptr)
    n_genes = log_values.shape[1]
    # Squares in float32, summed in float64, as scanpy's mean/variance kernel takes them.
    squares = log_values.data * log_values.data
    mean, std = scale_parameters(
        np.bincount(genes, weights=log_values.data, minlength=n_genes),
        np.bincount(genes, weights=squares, minlength=n_genes),
        log_values.shape[0],
    )
    selected = in_cells(log_values, cell_ids).T.toarray()
    return scale(selected, mean[:, None], std[:, None]).astype(np.float32)


def gene_expression(context: TaskContext, body: GeneExpressionBody) -> Encoded:
    store = context.store()
    cell_ids = selected_cells(context, store.n_cells, body.cellSets)
    lookup = gene_lookup(store)
    requested = list(dict.fromkeys(body.genes))
    found = [gene for gene in requested if gene in lookup]
    if len(found) * len(cell_ids) > MAX_VALUES:
        raise InvalidRequest(
            f"invalid request: body.genes: {len(found)} genes in {len(cell_ids)} cells exceed "
            f"{MAX_VALUES} values; ask for fewer genes or cells"
        )
    log_values = store.log_normalised(np.array([lookup[gene] for gene in found], int))
    if body.scale:
        values = scaled(log_values, cell_ids)
        summaries = [summary(gene_values) for gene_values in values]
        total = summary(values)
    else:
        selected = in_cells(log_values, cell_ids)
        values = selected.T.toarray()
        indptr, nonzeros = selected.indptr, selected.data
        summaries = [
            sparse_summary(nonzeros[indptr[gene] : indptr[gene + 1]], len(cell_ids))
            for gene in range(len(found))
        ]
        total = sparse_summary(nonzeros, values.size)
    # Joined from parts encoded once: every cell's barcode and value is tens of MB at a
    # million cells.
    return joined_object(
        {
            "cells": barcodes(store, cell_ids),
            "data": joined_array(
                joined_object({"geneName": gene, "expression": gene_values, **gene_summary})
                for gene, gene_values, gene_summary in zip(found, values, summaries, strict=True)
            ),
            "notFound": [gene for gene in requested if gene not in lookup],
            **total,
        }
    )


TASK = Task(name="GeneExpression", body=GeneExpressionBody, cacheable=True, compute=gene_expression)


class DownsampleSettings(BaseModel):
    """Which cells the rows are: `cellIds` as given, else sampled from the buckets of
    `selectedCellSet` split by `groupedTracks`. Older UIs' `selectedPoints` and
    `hiddenCellSets` are ignored, as the platform's worker ignores them."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    cellIds: list[int] | None = None
    selectedCellSet: str | None = None
    groupedTracks: list[str] | None = None


class GeneExpressionV2Body(V2TaskBody):
    # Older UIs also send `downsampled` and `scale`: ignored, as upstream's worker does.
    name: Literal["GeneExpression"]
    genes: list[str]
    downsampleSettings: DownsampleSettings | None = None


# At most this many cells of each bucket (the platform's `get_bucketed_heatmap_cells`).
MAX_CELLS_PER_BUCKET = 1000


def bucketed_cells(
    cell_sets: CellSets, settings: DownsampleSettings, n_cells: int, seed: int
) -> np.ndarray:
    """The cells of `selectedCellSet` that are in `louvain`, split by the children of each
    grouped track in turn (each bucket into its intersections with the children, in order,
    then its cells in none), at most MAX_CELLS_PER_BUCKET of each bucket drawn at random
    (seeded), ascending within a bucket, buckets one after the other."""
    if settings.selectedCellSet is None or settings.groupedTracks is None:
        raise InvalidRequest(
            "invalid request: body.downsampleSettings: selectedCellSet and groupedTracks are "
            "required when cellIds is not given"
        )
    enabled = np.intersect1d(
        cell_sets.ids(settings.selectedCellSet, n_cells), cell_sets.ids("louvain", n_cells)
    )
    if not settings.groupedTracks or not len(enabled):
        return np.zeros(0, dtype=np.int64)
    buckets = [enabled]
    for track in settings.groupedTracks:
        children = [
            cell_sets.ids(child["key"], n_cells)
            for child in cell_sets.node(track).get("children") or []
        ]
        in_a_child = np.concatenate([enabled[:0], *children])
        split = []
        for bucket in buckets:
            parts = [np.intersect1d(bucket, ids) for ids in children]
            parts.append(np.setdiff1d(bucket, in_a_child))
            split.extend(part for part in parts if len(part))
        buckets = split
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [
            np.sort(rng.choice(bucket, MAX_CELLS_PER_BUCKET, replace=False))
            if len(bucket) > MAX_CELLS_PER_BUCKET
            else bucket
            for bucket in buckets
        ]
    )


def rows_in_order(values: sparse.csc_array, cell_ids: np.ndarray) -> sparse.csc_array:
    """Rows `cell_ids` of a cells x genes matrix, in that order (an id may repeat; one outside
    the matrix is an empty row), row indices ascending within each gene."""
    n_cells, n_genes = values.shape
    inside = cell_ids[(cell_ids >= 0) & (cell_ids < n_cells)]
    # Entries of requested cells, found through a table rather than a search of every entry.
    kept = np.flatnonzero(np.bincount(inside, minlength=n_cells)[values.indices] > 0)
    cells, genes = values.indices[kept], entry_rows(values.indptr)[kept]
    # Each kept entry goes to every row that asks for its cell (a run of the sorted ids).
    order = np.argsort(cell_ids, kind="stable")
    sorted_ids = cell_ids[order]
    first = np.searchsorted(sorted_ids, cells, "left")
    copies = np.searchsorted(sorted_ids, cells, "right") - first
    entries = np.repeat(np.arange(len(kept)), copies)
    run_starts = np.repeat(np.cumsum(copies) - copies, copies)
    rows = order[first[entries] + np.arange(len(entries)) - run_starts]
    arrangement = np.lexsort((rows, genes[entries]))
    entries, rows = entries[arrangement], rows[arrangement]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(genes[entries], minlength=n_genes))])
    return sparse.csc_array(
        (values.data[kept][entries], rows, indptr), shape=(len(cell_ids), n_genes)
    )


def gene_expression_v2(context: TaskContext, body: GeneExpressionV2Body) -> dict[str, Any]:
    store = context.store()
    positions = matching_ignoring_case(store, body.genes)
    if not len(positions):
        raise GeneNotFound(f"Gene(s): {', '.join(body.genes)} not found!")
    n_values = int(store.var["n_cells"].to_numpy()[positions].sum())
    if n_values > MAX_VALUES:
        raise InvalidRequest(
            f"invalid request: body.genes: {len(positions)} genes hold {n_values} nonzero "
            f"values, more than {MAX_VALUES}; ask for fewer genes"
        )
    settings = body.downsampleSettings or DownsampleSettings()
    cell_ids = settings.cellIds
    bucketed = settings.selectedCellSet is not None or settings.groupedTracks is not None
    if cell_ids is None and bucketed:
        cell_ids = bucketed_cells(
            context.cell_sets(), settings, store.n_cells, store.parameters.random_state
        )
    log_values = store.log_normalised(positions)
    indptr, nonzeros = log_values.indptr, log_values.data
    stats = [
        expression_stats(nonzeros[indptr[gene] : indptr[gene + 1]], store.n_cells)
        for gene in range(len(positions))
    ]
    rows = log_values
    if cell_ids is not None:
        cell_ids = np.asarray(cell_ids, dtype=np.int64)
        rows = rows_in_order(log_values, cell_ids)
    return {
        "orderedGeneNames": store.var["gene_names"].to_numpy()[positions].tolist(),
        "stats": {
            field: np.array([gene[field] for gene in stats])
            for field in ("rawMean", "rawStdev", "truncatedMin", "truncatedMax")
        },
        "rawExpression": {
            "values": rows.data,
            "index": rows.indices,
            "ptr": rows.indptr,
            "size": list(rows.shape),
        },
        "cellIds": cell_ids,
    }


V2_TASK = Task(
    name="GeneExpression", body=GeneExpressionV2Body, cacheable=True, compute=gene_expression_v2
)
