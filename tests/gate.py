"""A task for tests of the loop: it waits on a named Dask Event, so a test holds a request in
flight for as long as it needs, whatever the cluster's number of threads."""

from typing import Literal

from distributed import Event

from worker.tasks import TASKS
from worker.tasks.base import Task, TaskBody, TaskContext


class GateBody(TaskBody):
    name: Literal["Gate"]
    event: str


def wait_for_gate(context: TaskContext, body: GateBody) -> dict:
    if not Event(body.event).wait(timeout=120):
        raise TimeoutError(f"the gate {body.event} was never opened")
    return {"opened": body.event}


GATE = Task(name="Gate", body=GateBody, cacheable=False, compute=wait_for_gate)
TASKS_WITH_GATE = TASKS | {"Gate": GATE}
