"""The platform's DifferentialExpression `comparisonType: "between"` over a store: raw counts
summed per pseudobulk sample in one pass over the gene-major copy, then the table of
`worker.compute.pseudobulk`. The v2 DifferentialExpression and BatchDifferentialExpression tasks
call `between_table` with the cells of their two groups."""

import numpy as np

from worker.compute.pseudobulk import BACKGROUND, BASE, MIN_CELLS, pseudobulk_block, table_of
from worker.errors import InvalidRequest
from worker.store.experiment import ExperimentStore
from worker.store.gene_blocks import map_gene_blocks


def pseudobulk_columns(
    sample_codes: np.ndarray, base: np.ndarray, background: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's pseudobulk column (-1: none) and each column's group.

    A column is the cells of one sample in one group (a cell in both groups counts as base, as
    the platform labels it), in the order columns first appear among cells; columns of fewer
    than MIN_CELLS cells are dropped. Raises InvalidRequest when a group is left without one.
    """
    group = np.full(len(sample_codes), -1)
    group[background] = 1
    group[base] = 0
    pair = np.where(group >= 0, sample_codes.astype(np.int64) * 2 + group, -1)
    pairs, first, sizes = np.unique(pair[pair >= 0], return_index=True, return_counts=True)
    kept = pairs[sizes >= MIN_CELLS][np.argsort(first[sizes >= MIN_CELLS])]
    column_of_cell = np.full(len(pair), -1)
    inside = np.isin(pair, kept)
    sorter = np.argsort(kept)
    column_of_cell[inside] = sorter[np.searchsorted(kept, pair[inside], sorter=sorter)]
    groups = np.where(kept % 2 == 0, BASE, BACKGROUND)
    for name, label in (("cellSet", BASE), ("compareWith", BACKGROUND)):
        if not (groups == label).any():
            raise InvalidRequest(
                f"invalid request: body.{name}: no sample has {MIN_CELLS} or more cells of the "
                f"{label} group, and pseudobulk differential expression needs one in each group"
            )
    return column_of_cell, groups


def pseudobulk_counts(
    store: ExperimentStore, column_of_cell: np.ndarray, n_columns: int
) -> np.ndarray:
    """Genes x columns raw counts summed per pseudobulk column."""
    blocks = map_gene_blocks(store, pseudobulk_block, column_of_cell, n_columns)
    return np.concatenate(blocks, axis=1).T


def between_table(store: ExperimentStore, base: np.ndarray, background: np.ndarray) -> dict:
    """The platform's "between" table of cell ids `base` against `background`, columnar:
    `p_val`, `logFC`, `AveExpr`, `p_val_adj` (with two pseudobulk samples only `logFC` and
    `AveExpr`), `gene_names` and `Gene`, rows in the platform's order."""
    column_of_cell, groups = pseudobulk_columns(store.sample_codes, base, background)
    table = table_of(pseudobulk_counts(store, column_of_cell, len(groups)), groups)
    order = table.pop("order")
    table["gene_names"] = store.var["gene_names"].to_numpy()[order]
    table["Gene"] = store.var["gene_ids"].to_numpy()[order]
    return table
