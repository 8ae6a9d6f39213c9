"""DifferentialExpression: every gene ranked between two groups of cells named by cell sets."""

from typing import Literal

import numpy as np
from pydantic import Field

from worker.compute.rank import Method, adjust_pvalues, rank_gene_block
from worker.errors import InvalidRequest
from worker.store.cell_sets import CellSets
from worker.store.gene_blocks import map_gene_blocks
from worker.tasks.base import Task, TaskBody, TaskContext

MAX_ROWS = 100_000


class DifferentialExpressionBody(TaskBody):
    name: Literal["DifferentialExpression"]
    cellSet: str = Field(max_length=200)
    # A cell set key, or "rest" or "background" (these words win over keys spelled the same).
    compareWith: str = Field(max_length=200)
    basis: str | None = Field(default=None, max_length=200)
    maxNum: int = Field(default=100, ge=0, le=MAX_ROWS)
    method: Method = "wilcoxon"


def comparison_groups(
    cell_sets: CellSets, body: DifferentialExpressionBody, n_cells: int
) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the two groups' cells; raises CellSetNotFound, or InvalidRequest for an empty
    group.

    `rest` is the union of the sets beside `cellSet` in its hierarchy, `background` every other
    cell; cells in both groups are dropped from both, as the platform does.
    """
    group1 = cell_sets.mask(body.cellSet, n_cells)
    if body.compareWith == "background":
        group2 = ~group1
    elif body.compareWith == "rest":
        group2 = cell_sets.siblings_mask(body.cellSet, n_cells)
    else:
        group2 = cell_sets.mask(body.compareWith, n_cells)
    if body.basis is not None:
        in_basis = cell_sets.mask(body.basis, n_cells)
        group1 &= in_basis
        group2 &= in_basis
    in_both = group1 & group2
    group1 &= ~in_both
    group2 &= ~in_both
    for field, key, group in (
        ("cellSet", body.cellSet, group1),
        ("compareWith", body.compareWith, group2),
    ):
        if not group.any():
            raise InvalidRequest(
                f"invalid request: body.{field}: the group {key!r} has no cells once restricted "
                "to the basis and without the cells of both groups"
            )
    return group1, group2


def float32_precise(values: np.ndarray) -> list[float]:
    """Values rounded to float32's 7 significant digits within float64's range, so p-values
    far below float32's smallest (1e-45) keep their magnitude."""
    return [float(f"{value:.7g}") for value in values]


def differential_expression(context: TaskContext, body: DifferentialExpressionBody) -> dict:
    store = context.store()
    in_group1, in_group2 = comparison_groups(context.cell_sets(), body, store.n_cells)
    blocks = map_gene_blocks(
        store, rank_gene_block, store.total_counts, in_group1, in_group2, body.method
    )
    statistics = {name: np.concatenate([block[name] for block in blocks]) for name in blocks[0]}
    p_val_adj = adjust_pvalues(statistics["p_val"])
    order = np.lexsort((-np.abs(statistics["logFC"]), p_val_adj))[: body.maxNum]
    columns = {
        "gene_names": store.var["gene_names"].to_numpy()[order],
        "gene_ids": store.var["gene_ids"].to_numpy()[order],
        "logFC": statistics["logFC"][order].astype(np.float32),
        "zscore": statistics["zscore"][order].astype(np.float32),
        "p_val": float32_precise(statistics["p_val"][order]),
        "p_val_adj": float32_precise(p_val_adj[order]),
        "pct_1": statistics["pct_1"][order].astype(np.float32),
        "pct_2": statistics["pct_2"][order].astype(np.float32),
    }
    rows = [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]
    return {"rows": rows, "total": store.n_genes}


TASK = Task(
    name="DifferentialExpression",
    body=DifferentialExpressionBody,
    cacheable=True,
    compute=differential_expression,
)
