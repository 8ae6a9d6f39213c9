"""GetMitochondrialContent: each cell's percentage of counts from mitochondrial genes."""

from typing import Literal

import numpy as np

from worker.tasks.base import Task, TaskBody, TaskContext


class GetMitochondrialContentBody(TaskBody):
    name: Literal["GetMitochondrialContent"]


def get_mitochondrial_content(
    context: TaskContext, body: GetMitochondrialContentBody
) -> np.ndarray:
    return np.asarray(context.store().obs_column("percent_mito"), dtype=np.float32)


TASK = Task(
    name="GetMitochondrialContent",
    body=GetMitochondrialContentBody,
    cacheable=True,
    compute=get_mitochondrial_content,
)
