"""GeneExpression: log-normalised (optionally scaled) values of a few genes in selected cells."""

import weakref
from typing import Annotated, Literal

import numpy as np
from pydantic import Field
from scipy import sparse

from worker.compute.arithmetic import entry_rows, scale, scale_parameters
from worker.compute.summary import sparse_summary, summary
from worker.errors import InvalidRequest
from worker.jsonio import Encoded, encoded, joined_array, joined_object
from worker.store.experiment import ExperimentStore
from worker.tasks.base import Task, TaskBody, TaskContext

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
