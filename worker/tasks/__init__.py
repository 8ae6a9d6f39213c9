"""The task registry, and the one function the queue loop submits to Dask for any task."""

import logging
import traceback

from pydantic import ValidationError

from worker.errors import InvalidRequest, TaskFailed, UnknownTask, WorkerError
from worker.jsonio import dumps
from worker.messages import TaskBody, error_body, invalid_request
from worker.tasks import (
    cluster_cells,
    differential_expression,
    gene_expression,
    get_doublet_score,
    get_embedding,
    get_mitochondrial_content,
    list_genes,
    marker_heatmap,
    prepare_experiment,
)
from worker.tasks.base import Task, TaskContext

log = logging.getLogger(__name__)

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        cluster_cells.TASK,
        differential_expression.TASK,
        gene_expression.TASK,
        get_doublet_score.TASK,
        get_embedding.TASK,
        get_mitochondrial_content.TASK,
        list_genes.TASK,
        marker_heatmap.TASK,
        prepare_experiment.TASK,
    )
}


def find_task(body: dict) -> tuple[Task, TaskBody]:
    """The task named by `body.name` and its validated body; raises UnknownTask/InvalidRequest."""
    name = body.get("name")
    if not isinstance(name, str):
        raise InvalidRequest("invalid request: body.name: a task name is required")
    task = TASKS.get(name)
    if task is None:
        raise UnknownTask(f"unknown task {name[:100]!r}; known tasks: {', '.join(sorted(TASKS))}")
    try:
        return task, task.body.model_validate(body)
    except ValidationError as error:
        raise invalid_request(error, prefix="body") from None


def run_task(body: dict, context: TaskContext, shows_tracebacks: bool) -> tuple[str | None, bytes]:
    """Compute one request; runs on a Dask worker. Returns (error code or None, JSON body).

    Errors travel back as data, not as exceptions, so nothing but bytes crosses processes.
    """
    try:
        task, validated = find_task(body)
        return None, dumps(task.compute(context, validated))
    except WorkerError as error:
        return error.code, error_body(error)
    except Exception as error:
        log.exception("task %s failed", body.get("name"))
        failure = TaskFailed(f"{body.get('name')} failed: {type(error).__name__}: {error}")
        return failure.code, error_body(
            failure, traceback.format_exc() if shows_tracebacks else None
        )
