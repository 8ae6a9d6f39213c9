"""ListGenes: a page of the gene table, filtered by a LIKE pattern and ordered by a field."""

import re
from typing import Literal

import numpy as np
from pydantic import Field

from worker.messages import TaskBody
from worker.store.experiment import open_experiment
from worker.tasks.base import Task, TaskContext

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


def like_to_regex(pattern: str) -> re.Pattern:
    """A SQL LIKE pattern (`%` any run, `_` one character, all else literal) as a regex."""
    translated = "".join(
        ".*" if char == "%" else "." if char == "_" else re.escape(char) for char in pattern
    )
    return re.compile(translated, re.IGNORECASE | re.DOTALL)


def list_genes(context: TaskContext, body: ListGenesBody) -> dict:
    genes = open_experiment(context.store_root, context.experiment_id, context.aws).var
    if body.geneNamesFilter is not None:
        matcher = like_to_regex(body.geneNamesFilter)
        keep = np.fromiter(
            (matcher.fullmatch(name) is not None for name in genes["gene_names"]),
            dtype=bool,
            count=len(genes),
        )
        genes = genes[keep]
    ordered = genes.sort_values(
        body.orderBy,
        ascending=body.orderDirection.lower() == "asc",
        kind="stable",
        na_position="last",
    )
    page = ordered.iloc[body.offset : body.offset + body.limit]
    fields = list(dict.fromkeys(body.selectFields))
    # numpy values, not Python floats, so float32 columns are written float32-precise.
    columns = [page[field].to_numpy() for field in fields]
    rows = [dict(zip(fields, values, strict=True)) for values in zip(*columns, strict=True)]
    return {"rows": rows, "total": len(genes)}


TASK = Task(name="ListGenes", body=ListGenesBody, cacheable=True, compute=list_genes)
