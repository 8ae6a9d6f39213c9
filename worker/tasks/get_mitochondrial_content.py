"""GetMitochondrialContent: each cell's percentage of counts from mitochondrial genes."""

from typing import Literal

import numpy as np

from worker.tasks.base import Task, TaskBody, TaskContext, V2TaskBody


class GetMitochondrialContentBody(TaskBody):
    name: Literal["GetMitochondrialContent"]


class GetMitochondrialContentV2Body(V2TaskBody):
    name: Literal["GetMitochondrialContent"]


def get_mitochondrial_content(
    context: TaskContext, body: GetMitochondrialContentBody | GetMitochondrialContentV2Body
) -> np.ndarray:
    """Each cell's percentage, indexed by cell id (the v2 answer's per-cell array: every cell
    of the store is in it)."""
    return np.asarray(context.store().obs_column("percent_mito"), dtype=np.float32)


TASK = Task(
    name="GetMitochondrialContent",
    body=GetMitochondrialContentBody,
    cacheable=True,
    compute=get_mitochondrial_content,
)
V2_TASK = Task(
    name="GetMitochondrialContent",
    body=GetMitochondrialContentV2Body,
    cacheable=True,
    compute=get_mitochondrial_content,
)
