"""GetNUmis (Cellenics v2): log10 of each cell's total counts."""

from typing import Literal

import numpy as np

from worker.compute.arithmetic import log10_counts
from worker.tasks.base import Task, TaskContext, V2TaskBody


class GetNUmisBody(V2TaskBody):
    name: Literal["GetNUmis"]


def get_n_umis(context: TaskContext, body: GetNUmisBody) -> np.ndarray:
    return log10_counts(context.store().total_counts)


V2_TASK = Task(name="GetNUmis", body=GetNUmisBody, cacheable=True, compute=get_n_umis)
