"""From a request body to a result: validated once where the request is received, computed on a
Dask worker, delivered from there. Imports no transport and no queue loop: the protocol that
received the request says, through a `Delivery`, where a large result goes."""

import logging
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from pydantic import ValidationError

from worker.errors import InvalidRequest, TaskFailed, UnknownTask, WorkerError
from worker.jsonio import dumps
from worker.tasks.base import Task, TaskBody, TaskContext

log = logging.getLogger(__name__)

# Field names in error messages come from the request: long ones are cut.
MAX_FIELD_CHARS = 200


@dataclass(frozen=True)
class TaskResult:
    """What came of computing a request: an error code or None, and the JSON body itself or
    where it was stored."""

    code: str | None
    body: bytes | None
    stored_at: str | None
    size: int

    @classmethod
    def inline(cls, code: str | None, body: bytes) -> "TaskResult":
        return cls(code=code, body=body, stored_at=None, size=len(body))

    @classmethod
    def failed(cls, error: WorkerError, traceback_text: str | None = None) -> "TaskResult":
        detail = {"code": error.code, "message": error.message}
        if traceback_text:
            detail["traceback"] = traceback_text
        return cls.inline(error.code, dumps({"error": detail}))


class Delivery(Protocol):
    """Turns a computed JSON body into the result the protocol answers with (storing it where
    it should not travel back); runs on the Dask worker, so it must be a plain picklable value."""

    def __call__(self, code: str | None, body: bytes) -> TaskResult: ...


@dataclass(frozen=True)
class Inline:
    """Every body travels back to the queue worker."""

    def __call__(self, code: str | None, body: bytes) -> TaskResult:
        return TaskResult.inline(code, body)


def validated(tasks: Mapping[str, Task], body: dict) -> tuple[Task, TaskBody]:
    """The task named by `body.name` in `tasks`, and the body validated by its schema."""
    name = body.get("name")
    if not isinstance(name, str):
        raise InvalidRequest("invalid request: body.name: a task name is required")
    task = tasks.get(name)
    if task is None:
        raise UnknownTask(f"unknown task {name[:100]!r}; known tasks: {', '.join(sorted(tasks))}")
    try:
        return task, task.body.model_validate(body)
    except ValidationError as error:
        raise invalid_request(error, prefix="body") from None


def invalid_request(error: ValidationError, prefix: str = "") -> InvalidRequest:
    """An InvalidRequest naming each invalid field of a pydantic validation error."""
    problems = []
    for detail in error.errors(include_url=False, include_input=False)[:10]:
        field = ".".join(str(part) for part in (prefix, *detail["loc"]) if part != "")
        problems.append(f"{field[:MAX_FIELD_CHARS] or '(body)'}: {detail['msg']}")
    return InvalidRequest("invalid request: " + "; ".join(problems))


def run_task(
    task: Task,
    body: TaskBody,
    context: TaskContext,
    delivery: Delivery,
    shows_tracebacks: bool,
) -> TaskResult:
    """Compute one validated request and deliver its result; runs on a Dask worker.

    Errors travel back as data, not as exceptions, so nothing but bytes crosses processes.
    """
    try:
        code, encoded = None, dumps(task.compute(context, body))
    except WorkerError as error:
        return TaskResult.failed(error)
    except Exception as error:
        log.exception("task %s failed", task.name)
        failure = TaskFailed(f"{task.name} failed: {type(error).__name__}: {error}")
        return TaskResult.failed(failure, traceback.format_exc() if shows_tracebacks else None)
    try:
        return delivery(code, encoded)
    except Exception as error:
        # The queue worker delivers it then, and if that fails too the message comes back.
        log.warning("delivering the result of %s from the Dask worker failed: %s", task.name, error)
        return TaskResult.inline(code, encoded)
