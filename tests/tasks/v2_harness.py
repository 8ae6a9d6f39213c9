"""A Cellenics v2 worker for the task tests: the session's queue emulator, Redis server, Dask
cluster and prepared experiments, and our stand-in for the platform's API, which receives the
cell set PATCHes and applies them to the stored cell sets."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.conftest import RunningWorker, make_settings
from worker.local.client import V2Answer, V2Client
from worker.local.platform_api import PlatformApiStandIn
from worker.store.cell_sets import CellSets, CellSetsLocation, update_cell_sets
from worker.transport.socketio import SocketEmitter
from worker.transport.v2 import V2Protocol

AUTHORIZATION = "Bearer v2-task-tests"


class V2Harness:
    """A v2 queue worker of its own (own queue), the platform's API stand-in, and the client."""

    def __init__(self, emulator_url: str, redis_url: str, dask_client, session_settings):
        self.api = PlatformApiStandIn(session_settings.cell_sets_bucket, session_settings.aws)
        self.settings = make_settings(
            emulator_url, WORKER_REDIS_URL=redis_url, WORKER_API_URL=self.api.url
        )
        self._emitter = SocketEmitter(self.settings.redis_url)
        self._worker = RunningWorker(
            self.settings, dask_client, [V2Protocol(self.settings, self._emitter)]
        )
        self.client = V2Client(self.settings)

    def close(self) -> None:
        self.client.close()
        self._worker.stop()
        self._emitter.close()
        self.api.stop()

    def ask(self, body: dict, experiment_id: str, **message_fields: Any) -> V2Answer:
        """Send `body` as the platform's API would and wait for what the browser gets."""
        message = self.client.message(
            body, experiment_id, authorization=AUTHORIZATION, **message_fields
        )
        self.client.send(message)
        return self.client.answer(message, timeout_s=240)

    def result(self, body: dict, experiment_id: str) -> Any:
        """The decoded result of a request that must succeed."""
        answer = self.ask(body, experiment_id)
        assert answer.result is not None, answer.notification
        return answer.result

    def error(self, body: dict, experiment_id: str) -> dict:
        """The error response (`errorCode`, `userMessage`) of a request that must fail."""
        answer = self.ask(body, experiment_id)
        response = answer.notification["response"]
        assert response["error"] is True, response
        return response

    def broadcasts(self, experiment_id: str) -> list[dict]:
        """The ExperimentUpdates notifications seen so far for the experiment."""
        return [
            payload
            for event, payload in self.client.seen
            if event == f"ExperimentUpdates-{experiment_id}"
        ]

    def cell_sets(self, experiment_id: str) -> list[dict]:
        """The experiment's stored cell set classes."""
        location = CellSetsLocation(
            self.settings.cell_sets_bucket, experiment_id, self.settings.aws
        )
        return CellSets.read(location).hierarchies


@contextmanager
def cell_sets_restored(settings, experiment_id: str) -> Iterator[None]:
    """The experiment's cell sets written back as they were after the block, so tests that
    change them leave the session's shared experiments as other tests expect them."""
    location = CellSetsLocation(settings.cell_sets_bucket, experiment_id, settings.aws)
    saved = CellSets.read(location).hierarchies
    try:
        yield
    finally:
        update_cell_sets(location, lambda current: saved)
