"""GetNGenes (Cellenics v2): log10 of each cell's number of genes with counts."""

from typing import Literal

import numpy as np

from worker.compute.arithmetic import log10_counts
from worker.tasks.base import Task, TaskContext, V2TaskBody


class GetNGenesBody(V2TaskBody):
    name: Literal["GetNGenes"]


def get_n_genes(context: TaskContext, body: GetNGenesBody) -> np.ndarray:
    return log10_counts(context.store().obs_column("n_genes"))


V2_TASK = Task(name="GetNGenes", body=GetNGenesBody, cacheable=True, compute=get_n_genes)
