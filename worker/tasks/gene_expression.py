"""GeneExpression: log-normalised (optionally scaled) values of a few genes in selected cells."""

import weakref
from typing import Annotated, Literal

import numpy as np
from pydantic import Field
from scipy import sparse

from worker.compute.arithmetic import entry_rows, log_normalise, mean_variance
from worker.errors import InvalidRequest
from worker.jsonio import encoded
from worker.messages import TaskBody
from worker.store.cell_sets import cell_set_ids, read_cell_sets
from worker.store.experiment import ExperimentStore, open_experiment
from worker.tasks.base import Task, TaskContext

MAX_GENES = 1000
MAX_CELL_SETS = 1000
# About 200 MB of JSON: a larger answer would not fit a browser, nor the worker's memory.
MAX_VALUES = 20_000_000
# scanpy's `pp.scale(max_value=10)`, as the stored PCA uses it.
SCALE_MAX_VALUE = 10

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
    hierarchies = read_cell_sets(context.cell_sets_bucket, context.experiment_id, context.aws)
    return np.unique(
        np.concatenate([cell_set_ids(hierarchies, key, n_cells) for key in cell_set_keys])
    )


def barcodes(store: ExperimentStore, cell_ids: np.ndarray):
    """The cells' barcodes, JSON-encodable; all cells' encoded once per opened store."""
    if len(cell_ids) < store.n_cells:
        return store.obs["barcode"].to_numpy()[cell_ids].tolist()
    all_barcodes = _all_barcodes.get(store)
    if all_barcodes is None:
        all_barcodes = _all_barcodes[store] = encoded(store.obs["barcode"].tolist())
    return all_barcodes


def log_normalised_genes(store: ExperimentStore, gene_indices: np.ndarray) -> sparse.csc_array:
    """Log-normalised float32 values of the genes in all cells (cells x genes)."""
    counts = sparse.csc_array(store.counts_by_gene(gene_indices))
    log_values = log_normalise(counts.data, store.total_counts[counts.indices])
    return sparse.csc_array((log_values, counts.indices, counts.indptr), shape=counts.shape)


def in_cells(log_values: sparse.csc_array, cell_ids: np.ndarray) -> sparse.csc_array:
    """The rows of the cells (ascending ids)."""
    if len(cell_ids) < log_values.shape[0]:
        return sparse.csc_array(log_values[cell_ids])
    return log_values


def scaled(log_values: sparse.csc_array, cell_ids: np.ndarray) -> np.ndarray:
    """The cells' values of each gene (genes x cells) z-scored over all cells and clipped, as
    scanpy's `pp.scale(max_value=10)`: unbiased variance, a zero standard deviation taken as 1."""
    genes = entry_rows(log_values.indptr)
    n_genes = log_values.shape[1]
    # Squares in float32, summed in float64, as scanpy's mean/variance kernel takes them.
    squares = log_values.data * log_values.data
    mean, variance = mean_variance(
        np.bincount(genes, weights=log_values.data, minlength=n_genes),
        np.bincount(genes, weights=squares, minlength=n_genes),
        log_values.shape[0],
    )
    std = np.sqrt(variance)
    std[std == 0] = 1
    selected = (in_cells(log_values, cell_ids).T.toarray() - mean[:, None]) / std[:, None]
    return np.clip(selected, -SCALE_MAX_VALUE, SCALE_MAX_VALUE).astype(np.float32)


NO_SUMMARY = {"min": None, "max": None, "mean": None, "stdev": None}


def summary(values: np.ndarray) -> dict:
    """`min`, `max`, `mean`, `stdev` (population) of float32 values; null when there are none."""
    if values.size == 0:
        return NO_SUMMARY
    return {
        "min": values.min(),
        "max": values.max(),
        "mean": np.float32(values.mean(dtype=np.float64)),
        "stdev": np.float32(values.std(dtype=np.float64)),
    }


def sparse_summary(nonzeros: np.ndarray, n_values: int) -> dict:
    """`summary` of `n_values` values that are `nonzeros` and zeros, from the nonzeros alone:
    a gene is zero in most cells, and a million-cell answer is then summarised in microseconds."""
    if n_values == 0:
        return NO_SUMMARY
    n_zeros = n_values - nonzeros.size
    extremes = [nonzeros.min(), nonzeros.max()] if nonzeros.size else []
    if n_zeros:
        extremes.append(np.float32(0))
    mean = nonzeros.sum(dtype=np.float64) / n_values
    deviations = nonzeros.astype(np.float64) - mean
    variance = (deviations @ deviations + n_zeros * mean * mean) / n_values
    return {
        "min": min(extremes),
        "max": max(extremes),
        "mean": np.float32(mean),
        "stdev": np.float32(np.sqrt(variance)),
    }


def gene_expression(context: TaskContext, body: GeneExpressionBody) -> dict:
    store = open_experiment(context.store_root, context.experiment_id, context.aws)
    cell_ids = selected_cells(context, store.n_cells, body.cellSets)
    lookup = gene_lookup(store)
    requested = list(dict.fromkeys(body.genes))
    found = [gene for gene in requested if gene in lookup]
    if len(found) * len(cell_ids) > MAX_VALUES:
        raise InvalidRequest(
            f"invalid request: body.genes: {len(found)} genes in {len(cell_ids)} cells exceed "
            f"{MAX_VALUES} values; ask for fewer genes or cells"
        )
    log_values = log_normalised_genes(store, np.array([lookup[gene] for gene in found], int))
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
    return {
        "cells": barcodes(store, cell_ids),
        "data": [
            {"geneName": gene, "expression": gene_values, **gene_summary}
            for gene, gene_values, gene_summary in zip(found, values, summaries, strict=True)
        ],
        "notFound": [gene for gene in requested if gene not in lookup],
        **total,
    }


TASK = Task(name="GeneExpression", body=GeneExpressionBody, cacheable=True, compute=gene_expression)
