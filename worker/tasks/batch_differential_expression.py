"""BatchDifferentialExpression (Cellenics v2): the differential expression of several pairs of
cell sets; `within`, all pairs in one pass over the store's genes."""

from typing import Any, Literal

import numpy as np

from worker.errors import CellSetNotFound, InvalidRequest
from worker.store.comparisons import comparison_cells, within_tables
from worker.store.experiment import ExperimentStore
from worker.store.pseudobulk import between_table
from worker.tasks.base import Task, TaskContext, V2TaskBody


class BatchDifferentialExpressionBody(V2TaskBody):
    name: Literal["BatchDifferentialExpression"]
    # Items of any JSON type, read as strings (as the platform's Python worker does).
    basis: list[Any]
    comparisonType: Literal["within", "between"]
    cellSet: list[Any] | None = None
    compareWith: str | None = None


def pairs(body: BatchDifferentialExpressionBody) -> list[tuple[str, str]]:
    """(basis, cellSet) of each comparison, as the platform pairs them: one basis with each
    cell set, or each basis with the first cell set."""
    if body.cellSet is None or body.compareWith is None:
        raise InvalidRequest("invalid request: body.cellSet and body.compareWith are required")
    if len(body.basis) == 1:
        return [(str(body.basis[0]), str(cell_set)) for cell_set in body.cellSet]
    if body.basis and not body.cellSet:
        raise InvalidRequest("invalid request: body.cellSet: one cell set is needed")
    return [(str(basis), str(body.cellSet[0])) for basis in body.basis]


def batch_differential_expression(
    context: TaskContext, body: BatchDifferentialExpressionBody
) -> list[dict]:
    """Each pair's `{total, data}` in order; a pair whose groups cannot be made or compared
    (an empty group, a key that names no set, too few cells for pseudobulk samples) answers
    `{total: 0, data: <the message>}`."""
    store = context.store()
    cell_sets = context.cell_sets()
    answers: list[dict] = []
    computed: list[int] = []
    comparisons = []
    for basis, cell_set in pairs(body):
        try:
            groups = comparison_cells(cell_sets, basis, cell_set, body.compareWith, store.n_cells)
        except (InvalidRequest, CellSetNotFound) as error:
            answers.append({"total": 0, "data": error.message})
            continue
        computed.append(len(answers))
        answers.append({})
        comparisons.append(groups)
    for position, table in zip(
        computed, tables(store, body.comparisonType, comparisons), strict=True
    ):
        answers[position] = (
            {"total": 0, "data": table}
            if isinstance(table, str)
            else {"total": len(table["Gene"]), "data": table}
        )
    return answers


def tables(
    store: ExperimentStore, comparison_type: str, comparisons: list[tuple[np.ndarray, np.ndarray]]
) -> list[dict | str]:
    """Each comparison's table, or the message saying why it has none."""
    if comparison_type == "within":
        return within_tables(store, comparisons) if comparisons else []
    results: list[dict | str] = []
    for base, background in comparisons:
        try:
            results.append(between_table(store, base, background))
        except InvalidRequest as error:
            results.append(error.message)
    return results


V2_TASK = Task(
    name="BatchDifferentialExpression",
    body=BatchDifferentialExpressionBody,
    cacheable=True,
    compute=batch_differential_expression,
)
