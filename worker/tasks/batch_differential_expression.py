"""BatchDifferentialExpression (Cellenics v2): the `within` differential expression of several
pairs of cell sets, all computed in one pass over the store's genes."""

from typing import Any, Literal

from worker.errors import CellSetNotFound, InvalidRequest
from worker.store.comparisons import comparison_cells, within_tables
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
    """Each pair's `{total, data}` in order; a pair whose groups cannot be made (an empty
    group, a key that names no set) answers `{total: 0, data: <the message>}`."""
    if body.comparisonType == "between":
        raise InvalidRequest(
            'comparisonType "between" (pseudobulk differential expression) is not yet supported'
        )
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
    if comparisons:
        for position, table in zip(computed, within_tables(store, comparisons), strict=True):
            answers[position] = {"total": len(table["Gene"]), "data": table}
    return answers


V2_TASK = Task(
    name="BatchDifferentialExpression",
    body=BatchDifferentialExpressionBody,
    cacheable=True,
    compute=batch_differential_expression,
)
