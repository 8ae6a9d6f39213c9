"""The Cellenics v2 comparisons: cell sets read as the platform groups cells (the base and
background of a differential expression, CELLENICS-V2.md section 2; the children of a class),
and presto's statistics of those groups over the store's gene blocks."""

from collections.abc import Callable
from typing import Any

import numpy as np

from worker.compute.rank import NO_GROUP
from worker.compute.wilcoxauc import (
    DE_CELLS,
    MARKER_CELLS,
    base_table,
    group_rank_sums,
    group_sizes,
    joined,
    labelling,
    present_groups,
    sample_groups,
    top_markers,
    wilcoxauc,
)
from worker.errors import InvalidRequest
from worker.store.cell_sets import CellSets
from worker.store.experiment import ExperimentStore
from worker.store.gene_blocks import map_gene_blocks
from worker.store.pseudobulk import between_table

# The platform's messages, spelling included.
FIRST_EMPTY = "No cell id fullfills the 1st cell set."
SECOND_EMPTY = "No cell id fullfills the 2nd cell set."


def comparison_cells(
    cell_sets: CellSets, basis: str | None, cell_set: str, compare_with: str, n_cells: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted cell ids of the base (`cell_set`) and the background (`compare_with`).

    As the platform: `compare_with` "background", or any key containing "all", is every cell
    of any class but the base; any other key containing "rest" is the sets beside `cell_set`
    in its class; else the set of that key; in these two cases, cells in both groups are
    dropped from both. A `basis` that is empty or contains "all" restricts nothing, else both
    groups are cut to it. A class key stands for the union of its children. Raises
    CellSetNotFound for a key that names nothing, InvalidRequest for an empty group.
    """
    first = cell_sets.ids(cell_set, n_cells)
    if compare_with == "background" or "all" in compare_with.lower():
        every_cell = [cell_sets.ids(root["key"], n_cells) for root in cell_sets.hierarchies]
        second = np.setdiff1d(np.concatenate([first[:0], *every_cell]), first)
    else:
        if "rest" in compare_with.lower():
            second = np.flatnonzero(cell_sets.siblings_mask(cell_set, n_cells))
        else:
            second = cell_sets.ids(compare_with, n_cells)
        in_both = np.intersect1d(first, second)
        first, second = np.setdiff1d(first, in_both), np.setdiff1d(second, in_both)
    if basis and "all" not in basis.lower():
        in_basis = cell_sets.ids(basis, n_cells)
        first, second = np.intersect1d(first, in_basis), np.intersect1d(second, in_basis)
    if len(first) == 0:
        raise InvalidRequest(FIRST_EMPTY)
    if len(second) == 0:
        raise InvalidRequest(SECOND_EMPTY)
    return first, second


def class_children(
    cell_sets: CellSets, class_key: str, n_cells: int
) -> list[tuple[dict, np.ndarray]]:
    """Each child of the class `class_key` (a root hierarchy) with its cell ids, in order;
    raises CellSetNotFound."""
    children = []
    for child in cell_sets.hierarchy(class_key).get("children") or []:
        cell_ids = np.asarray(child.get("cellIds") or [], dtype=np.int64)
        children.append((child, np.unique(cell_ids[(cell_ids >= 0) & (cell_ids < n_cells)])))
    return children


def within_tables(
    store: ExperimentStore, comparisons: list[tuple[np.ndarray, np.ndarray]]
) -> list[dict[str, Any]]:
    """The platform's `within` table of each (base, background) pair of cell ids, all from one
    pass over the genes: presto's `wilcoxauc` of the base against the background on at most
    DE_CELLS cells of each (a seeded sample), rows in gene order, with `gene_names` and the
    feature id as `Gene`."""
    labellings = [
        sample_groups(labelling([base, background], store.n_cells), DE_CELLS)
        for base, background in comparisons
    ]
    blocks = map_gene_blocks(store, group_rank_sums, store.total_counts, labellings)
    names = {
        "gene_names": store.var["gene_names"].to_numpy(),
        "Gene": store.var["gene_ids"].to_numpy(),
    }
    return [
        base_table(wilcoxauc(rank_sums, group_sizes(labels))) | names
        for rank_sums, labels in zip(joined(blocks), labellings, strict=True)
    ]


def within_table(store: ExperimentStore, base: np.ndarray, background: np.ndarray) -> dict:
    (table,) = within_tables(store, [(base, background)])
    return table


# The platform's differential expression table of cell ids `base` against `background`, by
# `comparisonType`.
TABLES: dict[str, Callable[[ExperimentStore, np.ndarray, np.ndarray], dict[str, Any]]] = {
    "within": within_table,
    "between": between_table,
}


def marker_genes(store: ExperimentStore, labels: np.ndarray, n_genes: int) -> np.ndarray:
    """Indices of the platform's top `n_genes` marker genes of each group of `labels` (in group
    order), from at most MARKER_CELLS cells of each group (a seeded sample), each group against
    the other grouped cells; none when fewer than two groups hold cells."""
    labels, _present = present_groups(labels)
    if labels.max(initial=NO_GROUP) < 1:
        return np.zeros(0, dtype=np.int64)
    labels = sample_groups(labels, MARKER_CELLS)
    (rank_sums,) = joined(map_gene_blocks(store, group_rank_sums, store.total_counts, [labels]))
    return top_markers(wilcoxauc(rank_sums, group_sizes(labels)), n_genes)
