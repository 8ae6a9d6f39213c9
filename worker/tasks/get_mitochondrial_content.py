"""GetMitochondrialContent: each cell's percentage of counts from mitochondrial genes."""

from typing import Literal

import numpy as np

from worker.messages import TaskBody
from worker.store.experiment import open_experiment
from worker.tasks.base import Task, TaskContext


class GetMitochondrialContentBody(TaskBody):
    name: Literal["GetMitochondrialContent"]


def get_mitochondrial_content(
    context: TaskContext, body: GetMitochondrialContentBody
) -> np.ndarray:
    store = open_experiment(context.store_root, context.experiment_id, context.aws)
    # One column read, not the whole obs table (barcodes included) that `store.obs` loads.
    return np.asarray(store.group["obs/percent_mito"][...], dtype=np.float32)


TASK = Task(
    name="GetMitochondrialContent",
    body=GetMitochondrialContentBody,
    cacheable=True,
    compute=get_mitochondrial_content,
)
