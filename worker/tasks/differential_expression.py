"""DifferentialExpression: every gene ranked between two groups of cells named by cell sets;
in Cellenics v2, the platform's `within` (presto's Wilcoxon test and AUC) or `between`
(pseudobulk) table, columnar, paginated as the platform's R worker pages it."""

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from worker.compute.rank import Method, adjust_pvalues, rank_gene_block
from worker.errors import InvalidRequest
from worker.store.cell_sets import CellSets
from worker.store.comparisons import TABLES, comparison_cells
from worker.store.gene_blocks import map_gene_blocks
from worker.store.gene_index import name_filter
from worker.tasks.base import Task, TaskBody, TaskContext, V2TaskBody

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


class PaginationFilter(BaseModel):
    """A filter of the UI's table: numeric (`columnName`, `comparison`, `value`) or, on
    `gene_names`, text (`expression`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    columnName: str
    type: str | None = None
    comparison: str | None = None
    value: float | None = None
    expression: str | None = None


class Pagination(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    orderBy: str | None = None
    orderDirection: str | None = None
    offset: int = Field(default=0, ge=0)
    limit: int | None = Field(default=None, ge=0)
    filters: list[PaginationFilter] = Field(default_factory=list)


class DifferentialExpressionV2Body(V2TaskBody):
    name: Literal["DifferentialExpression"]
    cellSet: str
    compareWith: str
    basis: str | None = None
    comparisonType: Literal["within", "between"] = "within"
    genesOnly: bool = False
    # The request's `requestProps.pagination`, put here by the v2 protocol.
    pagination: Pagination | None = None


# The table's columns that are not numbers.
NAMES = ("gene_names", "Gene")


def differential_expression_v2(context: TaskContext, body: DifferentialExpressionV2Body) -> dict:
    """The platform's table of every gene for the base against the background, `within`
    (presto's Wilcoxon test and AUC) or `between` (pseudobulk), whole or paginated."""
    store = context.store()
    base, background = comparison_cells(
        context.cell_sets(), body.basis, body.cellSet, body.compareWith, store.n_cells
    )
    table = TABLES[body.comparisonType](store, base, background)
    if body.pagination is None:
        return {"total": len(table["Gene"]), "data": table}
    return paginated(table, body.pagination, body.genesOnly)


def paginated(table: dict[str, np.ndarray], pagination: Pagination, genes_only: bool) -> dict:
    """The rows the platform's R worker returns for a page: rows holding a null (NaN) dropped;
    the first filter on `gene_names` as the platform's gene name filter, then each numeric
    filter (strictly greater or less); a stable sort by `orderBy` if it is a column (descending
    only for "DESC"); `total` the rows left, the page `offset:offset+limit` of them. With
    `genesOnly`: the first `limit` names and ids, and their number as `total`."""
    numbers = [column for column in table if column not in NAMES]
    keep = ~np.any(np.isnan(np.vstack([table[column] for column in numbers])), axis=0)
    text = next((rule for rule in pagination.filters if rule.columnName == "gene_names"), None)
    if text is not None:
        keep &= gene_name_matches(table["gene_names"], text.expression)
    for rule in pagination.filters:
        if rule.columnName in numbers:
            keep &= numeric_matches(table[rule.columnName], rule)
    rows = np.flatnonzero(keep)
    if pagination.orderBy in table:
        rows = rows[stable_order(table[pagination.orderBy][rows], pagination.orderDirection)]
    if genes_only:
        rows = rows[: pagination.limit]
        return {
            "total": len(rows),
            "data": {"gene_names": table["gene_names"][rows], "gene_id": table["Gene"][rows]},
        }
    stop = None if pagination.limit is None else pagination.offset + pagination.limit
    page = rows[pagination.offset : stop]
    return {"total": len(rows), "data": {column: values[page] for column, values in table.items()}}


def gene_name_matches(gene_names: np.ndarray, expression: str | None) -> np.ndarray:
    if expression is None:
        raise InvalidRequest(
            "invalid request: pagination.filters: the gene_names filter has no expression"
        )
    pattern = name_filter(expression, "pagination.filters")
    return np.array([pattern.search(name) is not None for name in gene_names], dtype=bool)


def numeric_matches(values: np.ndarray, rule: PaginationFilter) -> np.ndarray:
    if rule.value is None or rule.comparison not in ("greaterThan", "lessThan"):
        raise InvalidRequest(
            f"invalid request: pagination.filters: the filter on {rule.columnName} needs a "
            'value and a comparison "greaterThan" or "lessThan"'
        )
    return values > rule.value if rule.comparison == "greaterThan" else values < rule.value


def stable_order(values: np.ndarray, direction: str | None) -> np.ndarray:
    """Positions of `values` sorted, ties in their order; descending if `direction` is
    "DESC"."""
    if direction != "DESC":
        return np.argsort(values, kind="stable")
    return len(values) - 1 - np.argsort(values[::-1], kind="stable")[::-1]


V2_TASK = Task(
    name="DifferentialExpression",
    body=DifferentialExpressionV2Body,
    cacheable=True,
    compute=differential_expression_v2,
)
