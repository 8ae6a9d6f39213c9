"""ListGenes: a page of the gene table, filtered by a LIKE pattern (Cellenics v2: a regular
expression) and ordered by a field."""

import re
import weakref
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from worker.store.experiment import ExperimentStore
from worker.store.gene_index import name_filter
from worker.tasks.base import Task, TaskBody, TaskContext, V2TaskBody

GeneField = Literal[
    "gene_names", "gene_ids", "dispersions", "dispersions_norm", "means", "highly_variable",
    "n_cells",
]  # fmt: skip
GENE_FIELDS: tuple[str, ...] = GeneField.__args__
MAX_LIMIT = 100_000


class ListGenesBody(TaskBody):
    name: Literal["ListGenes"]
    selectFields: list[GeneField] = Field(
        default_factory=lambda: list(GENE_FIELDS), min_length=1, max_length=len(GENE_FIELDS)
    )
    orderBy: GeneField = "dispersions"
    orderDirection: str = Field(default="desc", pattern=r"(?i)^(asc|desc)$")
    offset: int = Field(default=0, ge=0, le=10**9)
    limit: int = Field(default=MAX_LIMIT, ge=0, le=MAX_LIMIT)
    geneNamesFilter: str | None = Field(default=None, max_length=1000)


def like_to_regex(pattern: str, *, any_char: str) -> str:
    """A SQL LIKE pattern (`%` any run, `_` one character, all else literal), lower-cased, as a
    regular expression whose one character is `any_char`."""
    return "".join(
        f"{any_char}*" if char == "%" else any_char if char == "_" else re.escape(char)
        for char in pattern.lower()
    )


# One character of a name within the newline-joined names.
_WITHIN_A_LINE = "[^\\n]"


class GeneTable:
    """The gene table of one opened store, arranged for fast filtering and paging."""

    def __init__(self, genes: pd.DataFrame):
        # Lower-cased one by one: lowering can change a name's length, and positions must hold.
        names = [name.lower() for name in genes["gene_names"].astype(str)]
        self.n_genes = len(names)
        self.columns = {field: genes[field].to_numpy() for field in GENE_FIELDS}
        # All names in one lower-case string: a LIKE filter is then one case-sensitive regex
        # scan in C, several times faster than a Python loop or a case-insensitive scan.
        # None if a name holds a newline itself (a hostile store): then matched name by name.
        self._names = names
        self._joined_names = None if any("\n" in name for name in names) else "\n".join(names)
        self._line_starts = np.cumsum([0] + [len(name) + 1 for name in names[:-1]])
        self._genes = genes.reset_index(drop=True)
        self._orders: dict[tuple[str, bool], np.ndarray] = {}

    def matching(self, pattern: str) -> np.ndarray:
        """Mask of the genes whose names match the LIKE pattern."""
        if self._joined_names is None:
            whole_name = re.compile(like_to_regex(pattern, any_char="."), re.DOTALL)
            return np.fromiter(
                (whole_name.fullmatch(name) is not None for name in self._names),
                dtype=bool,
                count=self.n_genes,
            )
        keep = np.zeros(self.n_genes, dtype=bool)
        if "\n" in pattern:  # a literal newline, which no name holds
            return keep
        line = re.compile(f"^{like_to_regex(pattern, any_char=_WITHIN_A_LINE)}$", re.MULTILINE)
        starts = [match.start() for match in line.finditer(self._joined_names)]
        keep[np.searchsorted(self._line_starts, starts)] = True
        return keep

    def searching(self, pattern: re.Pattern) -> np.ndarray:
        """Mask of the genes whose names `pattern` finds a match in (name by name: a pattern may
        match a newline, so one scan of the joined names could match across two)."""
        return np.fromiter(
            (pattern.search(name) is not None for name in self.columns["gene_names"]),
            dtype=bool,
            count=self.n_genes,
        )

    def order(self, field: str, ascending: bool) -> np.ndarray:
        """Gene positions sorted by `field`, stable, nulls last; computed once per field."""
        key = (field, ascending)
        if key not in self._orders:
            ordered = self._genes.sort_values(
                field, ascending=ascending, kind="stable", na_position="last"
            )
            self._orders[key] = ordered.index.to_numpy()
        return self._orders[key]


_tables: "weakref.WeakKeyDictionary[ExperimentStore, GeneTable]" = weakref.WeakKeyDictionary()


def gene_table(store: ExperimentStore) -> GeneTable:
    table = _tables.get(store)
    if table is None:
        table = _tables[store] = GeneTable(store.var)
    return table


def list_genes(context: TaskContext, body: ListGenesBody) -> dict:
    table = gene_table(context.store())
    order = table.order(body.orderBy, body.orderDirection.lower() == "asc")
    if body.geneNamesFilter is not None:
        order = order[table.matching(body.geneNamesFilter)[order]]
    page = order[body.offset : body.offset + body.limit]
    fields = list(dict.fromkeys(body.selectFields))
    # numpy values, not Python floats, so float32 columns are written float32-precise.
    columns = [table.columns[field][page] for field in fields]
    rows = [dict(zip(fields, values, strict=True)) for values in zip(*columns, strict=True)]
    return {"rows": rows, "total": len(order)}


TASK = Task(name="ListGenes", body=ListGenesBody, cacheable=True, compute=list_genes)


class ListGenesV2Body(V2TaskBody):
    name: Literal["ListGenes"]
    # The UI's columns; the platform's worker answers gene_names and dispersions whatever they are.
    selectFields: list[str] = Field(default_factory=list)
    orderBy: str = "dispersions"
    orderDirection: str = "DESC"
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=MAX_LIMIT, ge=0)
    geneNamesFilter: str | None = None


# The v2 answer's `dispersions` are the normalised dispersions (the platform's Seurat
# `variance.standardized`: what highly variable genes are ranked by).
V2_ORDER_FIELDS = {"gene_names": "gene_names", "dispersions": "dispersions_norm"}


def list_genes_v2(context: TaskContext, body: ListGenesV2Body) -> dict:
    table = gene_table(context.store())
    field = V2_ORDER_FIELDS.get(body.orderBy)
    if field is None:
        order = np.arange(table.n_genes)
    else:
        order = table.order(field, body.orderDirection.upper() != "DESC")
    if body.geneNamesFilter is not None:
        pattern = name_filter(body.geneNamesFilter, "body.geneNamesFilter")
        order = order[table.searching(pattern)[order]]
    page = order[body.offset : body.offset + body.limit]
    return {
        "total": len(order),
        "gene_names": table.columns["gene_names"][page],
        "dispersions": table.columns["dispersions_norm"][page],
    }


V2_TASK = Task(name="ListGenes", body=ListGenesV2Body, cacheable=True, compute=list_genes_v2)
