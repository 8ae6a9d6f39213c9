"""The queue loop: receive, lease, dispatch, answer. It knows message formats only through
their `Protocol`s and tasks only through each protocol's registry."""

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass

from distributed import Client

from worker.errors import PoisonMessage, TaskFailed, TransportError, WorkerError
from worker.jsonio import dumps
from worker.service.cluster import DaskConnection, lost_with_the_cluster
from worker.service.health import HealthServer
from worker.settings import Settings
from worker.tasks.base import TaskContext
from worker.tasks.dispatch import TaskResult, run_task, validated
from worker.transport.protocol import Protocol, Request, parse_message
from worker.transport.queue import Lease, ReceivedMessage, WorkQueue

log = logging.getLogger(__name__)

# How often a computing request's protocol hears that it still runs (the platform's browsers
# show it, and the v2 worker re-emits its status this often).
HEARTBEAT_S = 5.0


@dataclass(frozen=True)
class Outcome:
    """How the handling of one message ended: its one log line and its one metric."""

    # ok, error (answered with one), expired or cached (dropped unanswered), poison (moved to
    # the dead-letter queue), released (given back at shutdown or when the Dask cluster went
    # away), failed (left for a retry).
    kind: str
    task: str = "unknown"
    request: Request | None = None
    code: str | None = None
    result_bytes: int | None = None
    reason: str | None = None


class QueueWorker:
    """Serves the work queue until `stop()`; several requests in flight, bounded."""

    def __init__(
        self,
        settings: Settings,
        cluster: DaskConnection,
        queue: WorkQueue,
        protocols: Sequence[Protocol],
        health: HealthServer,
    ):
        self._settings = settings
        self._cluster = cluster
        self._queue = queue
        self._protocols = protocols
        self._health = health
        self._slots = threading.BoundedSemaphore(settings.max_in_flight)
        self._handlers = ThreadPoolExecutor(settings.max_in_flight, thread_name_prefix="request")
        self._stopping = threading.Event()
        self._stopped: Future = Future()
        self._release_at = float("inf")

    def run(self) -> None:
        """Poll until stopped, then finish or release what is in flight."""
        log.info("serving %s, up to %d in flight", self._queue.url, self._settings.max_in_flight)
        while not self._stopping.is_set():
            free = self._take_free_slots()
            if not free:
                continue
            if not self._cluster.usable():
                # No cluster: receiving now would only spend receive counts. Looked at once a
                # slot is free: a request the lost cluster took is released before its slot is.
                for _unused in range(free):
                    self._slots.release()
                self._health.mark_polled()
                self._cluster.wait_usable(self._stopping, timeout_s=1.0)
                continue
            try:
                messages = self._receive(free)
            except TransportError as error:
                log.error("%s; receiving again in a second", error)
                messages = []
                self._stopping.wait(1.0)
            self._health.mark_polled()
            for _unused in range(free - len(messages)):
                self._slots.release()
            for message in messages:
                self._handlers.submit(self._handle_in_slot, message)
        self._handlers.shutdown(wait=True)
        log.info("stopped serving %s", self._queue.url)

    def stop(self) -> None:
        """Stop receiving; in-flight requests get the shutdown grace period, then are released."""
        if not self._stopping.is_set():
            self._release_at = time.monotonic() + self._settings.shutdown_grace_s
            self._stopping.set()
            self._stopped.set_result(None)

    def _receive(self, max_messages: int) -> list[ReceivedMessage]:
        """One long poll, in a thread of its own so that stop() need not wait for it to end; a
        poll that ends after stop() has its messages released at once."""
        poll: Future = Future()

        def receive() -> None:
            try:
                poll.set_result(self._queue.receive(max_messages, self._settings.poll_wait_s))
            except BaseException as error:
                poll.set_exception(error)

        threading.Thread(target=receive, name="receive", daemon=True).start()
        wait([poll, self._stopped], return_when=FIRST_COMPLETED)
        if not poll.done():
            log.info("stopping with a receive in progress: whatever it brings is released")
            poll.add_done_callback(self._release_late)
            return []
        return poll.result()

    def _release_late(self, poll: Future) -> None:
        for message in [] if poll.exception() else poll.result():
            try:
                self._queue.release(message)
                outcome = Outcome("released", reason="received as the worker stopped")
            except TransportError as error:
                outcome = Outcome("failed", reason=str(error))
            self._record(outcome, message, 0.0)

    def _take_free_slots(self) -> int:
        if not self._slots.acquire(timeout=0.5):
            # Busy, not stuck: every slot is computing, and the loop is alive.
            self._health.mark_polled()
            return 0
        free = 1
        while free < min(10, self._settings.max_in_flight) and self._slots.acquire(blocking=False):
            free += 1
        return free

    def _handle_in_slot(self, message: ReceivedMessage) -> None:
        started = time.monotonic()
        try:
            with self._health.in_flight(), self._queue.lease(message) as lease:
                outcome = self._handle(message, lease)
        except Exception as error:
            # Not deleted: the message becomes visible again and is retried, then dead-lettered.
            log.debug("handling %s failed", message.message_id, exc_info=True)
            outcome = Outcome("failed", reason=f"{type(error).__name__}: {error}")
        finally:
            self._slots.release()
        self._record(outcome, message, time.monotonic() - started)

    def _handle(self, message: ReceivedMessage, lease: Lease) -> Outcome:
        if self._stopping.is_set():
            lease.release()
            return Outcome("released")
        try:
            protocol, request = parse_message(message.body, self._protocols)
        except PoisonMessage as reason:
            self._queue.dead_letter(message, str(reason))
            return Outcome("poison", reason=str(reason))
        # Metrics are labelled by task: a label per invented name would grow without bound.
        task = request.task_name if request.task_name in protocol.tasks else "unknown"
        try:
            skip = protocol.skip_reason(request) if request.invalid is None else None
            if skip is not None:
                lease.delete()
                return Outcome(skip, task, request)
            result, cacheable = self._compute(protocol, request)
            if result is None:
                lease.release()
                reason = "shutdown" if self._stopping.is_set() else "the Dask cluster went away"
                return Outcome("released", task, request, reason=reason)
            protocol.answer(request, result, cacheable=cacheable)
            lease.delete()
        except (TransportError, OSError) as error:
            return Outcome("failed", task, request, reason=f"{type(error).__name__}: {error}")
        return Outcome("error" if result.code else "ok", task, request, result.code, result.size)

    def _compute(self, protocol: Protocol, request: Request) -> tuple[TaskResult | None, bool]:
        """The request's result and whether it is cacheable; None if shutdown came first or the
        Dask cluster went away with the computation."""
        if request.invalid is not None:
            return TaskResult.failed(request.invalid), False
        try:
            task, body = validated(protocol.tasks, request.body)
        except WorkerError as error:
            return TaskResult.failed(error), False
        # Received while the cluster is away: held (the lease keeps it invisible) rather than
        # released, which would spend a receive.
        if not self._cluster.wait_usable(self._stopping):
            return None, task.cacheable
        key = f"{task.name}-{request.request_id[:64]}-{secrets.token_hex(4)}"
        context = TaskContext.for_experiment(
            self._settings,
            request.experiment_id,
            api=protocol.platform_api(request),
            progress_topic=f"progress-{key}",
            result_file=protocol.result_file(request, task),
        )
        protocol.started(request)
        client = self._cluster.client
        try:
            with self._progress_of(client, context.progress_topic) as progress:
                future = client.submit(
                    run_task,
                    task,
                    body,
                    context,
                    protocol.delivery(request, task),
                    self._settings.shows_tracebacks,
                    key=key,
                    pure=False,
                )
                result = self._wait(
                    future, lambda: protocol.heartbeat(request, progress.get("latest"))
                )
        except Exception as error:
            if lost_with_the_cluster(error):
                return None, task.cacheable
            raise
        return result, task.cacheable

    @contextmanager
    def _progress_of(self, client: Client, topic: str) -> Iterator[dict]:
        """The latest progress a task reports on `topic`, kept up to date while in the block."""
        progress: dict = {}

        def keep(event: tuple) -> None:
            progress["latest"] = event[1]

        client.subscribe_topic(topic, keep)
        try:
            yield progress
        finally:
            client.unsubscribe_topic(topic)

    def _wait(self, future, heartbeat: Callable[[], None]) -> TaskResult | None:
        """The task's result; None if the shutdown grace period ended first or the cluster was
        lost. `heartbeat` is called every HEARTBEAT_S while waiting."""
        # Waited on through an event, not `future.result(timeout=...)`: distributed's sync with a
        # timeout can return an unset result (UnboundLocalError) when the wait is cancelled.
        finished = threading.Event()
        future.add_done_callback(lambda _: finished.set())
        next_beat = time.monotonic() + HEARTBEAT_S
        while not (finished.wait(self._wait_step()) or future.done()):
            if self._stopping.is_set() and time.monotonic() > self._release_at:
                future.cancel()
                return None
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + HEARTBEAT_S
                try:
                    heartbeat()
                except TransportError as error:
                    log.warning("a heartbeat was not sent: %s", error)
        try:
            return future.result()
        except Exception as error:
            if lost_with_the_cluster(error):
                return None
            # The Dask side failed (its Dask workers kept dying): answer, don't crash.
            return TaskResult.failed(
                TaskFailed(f"the computation failed: {type(error).__name__}: {error}")
            )

    def _wait_step(self) -> float:
        return min(1.0, max(0.1, self._release_at - time.monotonic()))

    def _record(self, outcome: Outcome, message: ReceivedMessage, seconds: float) -> None:
        self._health.request_finished(outcome.task, outcome.kind, seconds)
        request = outcome.request
        line = {
            "id": request.request_id if request else None,
            "experimentId": request.experiment_id if request else None,
            "task": outcome.task,
            "outcome": outcome.kind,
            "code": outcome.code,
            "seconds": round(seconds, 4),
            "resultBytes": outcome.result_bytes,
            "messageId": message.message_id,
            "receiveCount": message.receive_count,
            "reason": outcome.reason,
        }
        if outcome.kind == "failed":
            # Left on the queue: it comes back, until the redrive policy dead-letters it.
            last = message.receive_count >= self._settings.max_receive_count
            line["then"] = "dead-lettered by the queue" if last else "retried"
        level = logging.ERROR if outcome.kind in ("poison", "failed") else logging.INFO
        log.log(
            level, "request %s", dumps({k: v for k, v in line.items() if v is not None}).decode()
        )
