"""GetBackgroundExpressedGenes (Cellenics v2): the genes with more than 15 counts in the cells
of a comparison, the genes its pseudobulk test would keep (edgeR's `min.total.count`)."""

from typing import Literal

import numpy as np

from worker.compute.arithmetic import counts_in_cells
from worker.store.comparisons import comparison_cells
from worker.store.gene_blocks import map_gene_blocks
from worker.tasks.base import Task, TaskContext, V2TaskBody

MIN_TOTAL_COUNT = 15


class GetBackgroundExpressedGenesBody(V2TaskBody):
    name: Literal["GetBackgroundExpressedGenes"]
    cellSet: str
    compareWith: str
    basis: str | None = None
    # Sent, not used.
    comparisonType: Literal["within", "between"] = "within"


def get_background_expressed_genes(
    context: TaskContext, body: GetBackgroundExpressedGenesBody
) -> dict:
    """`{genes}`: the names of the genes whose raw counts summed over the base and background
    cells exceed 15, in gene order."""
    store = context.store()
    base, background = comparison_cells(
        context.cell_sets(), body.basis, body.cellSet, body.compareWith, store.n_cells
    )
    in_cells = np.zeros(store.n_cells, dtype=bool)
    in_cells[base] = in_cells[background] = True
    totals = np.concatenate(map_gene_blocks(store, counts_in_cells, in_cells))
    return {"genes": store.var["gene_names"].to_numpy()[totals > MIN_TOTAL_COUNT]}


V2_TASK = Task(
    name="GetBackgroundExpressedGenes",
    body=GetBackgroundExpressedGenesBody,
    cacheable=True,
    compute=get_background_expressed_genes,
)
