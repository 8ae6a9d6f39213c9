"""The queue loop: receive, validate, submit to Dask, publish, delete. Knows tasks only
through the registry."""

import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager

from distributed import Client

from worker.errors import TaskFailed, WorkerError
from worker.health import HealthServer
from worker.jsonio import dumps
from worker.messages import (
    OFFLOAD_BYTES,
    PoisonMessage,
    error_body,
    parse_request,
    response_text,
)
from worker.settings import Settings
from worker.tasks import TASKS, find_task, run_task
from worker.tasks.base import TaskContext
from worker.transport.queue import ReceivedMessage, WorkQueue
from worker.transport.results import ResultPublisher, store_result

log = logging.getLogger(__name__)


class QueueWorker:
    """Serves the work queue until `stop()`; several requests in flight, bounded."""

    def __init__(
        self,
        settings: Settings,
        client: Client,
        queue: WorkQueue,
        publisher: ResultPublisher,
        health: HealthServer,
    ):
        self._settings = settings
        self._client = client
        self._queue = queue
        self._publisher = publisher
        self._health = health
        self._slots = threading.BoundedSemaphore(settings.max_in_flight)
        self._handlers = ThreadPoolExecutor(settings.max_in_flight, thread_name_prefix="request")
        self._stopping = threading.Event()
        self._release_at = float("inf")

    def run(self) -> None:
        """Poll until stopped, then finish or release what is in flight."""
        log.info(
            "serving %s with up to %d requests in flight",
            self._queue.url,
            self._settings.max_in_flight,
        )
        while not self._stopping.is_set():
            free = self._take_free_slots()
            if not free:
                continue
            try:
                messages = self._queue.receive(free, wait_s=self._settings.poll_wait_s)
            except Exception:
                log.exception("receiving from the work queue failed; retrying")
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
        try:
            with self._health.in_flight():
                self._handle(message)
        except Exception:
            # Not deleted: the message becomes visible again and is retried, then dead-lettered.
            last_try = message.receive_count >= self._settings.max_receive_count
            log.exception(
                "request %s failed outside its task on receive %d of %d; %s",
                message.message_id,
                message.receive_count,
                self._settings.max_receive_count,
                "the queue moves it to the dead-letter queue"
                if last_try
                else "left on the queue for a retry",
            )
        finally:
            self._slots.release()

    def _handle(self, message: ReceivedMessage) -> None:
        started = time.monotonic()
        if self._stopping.is_set():
            self._queue.release(message)
            return
        try:
            request = parse_request(message.body)
        except PoisonMessage as reason:
            log.error(
                "poison message %s: %s; moved to the dead-letter queue", message.message_id, reason
            )
            self._queue.dead_letter(message, str(reason))
            self._finish("unknown", "poison", started, message_id=message.message_id)
            return
        envelope = request.envelope
        body = request.raw.get("body")
        name = body.get("name") if isinstance(body, dict) else None
        # Metrics are labelled by task: a label per invented name would grow without bound.
        task_name = name if isinstance(name, str) and name in TASKS else "unknown"
        if request.invalid is not None:
            self._answer(
                message, request.raw, error_body(request.invalid), error=True, cacheable=False
            )
            self._finish(task_name, "error", started, request=request.raw, code="InvalidRequest")
            return
        if envelope.expired():
            log.info(
                "request %s expired at %s; deleted unanswered",
                request.uuid,
                envelope.timeout.isoformat(),
            )
            self._queue.delete(message)
            self._finish(task_name, "expired", started, request=request.raw)
            return
        try:
            task, _ = find_task(envelope.body)
        except WorkerError as error:
            self._answer(message, request.raw, error_body(error), error=True, cacheable=False)
            self._finish(task_name, "error", started, request=request.raw, code=error.code)
            return
        context = TaskContext.for_experiment(self._settings, envelope.experimentId)
        with self._kept_invisible(message):
            future = self._client.submit(
                answer_on_dask_worker,
                envelope.body,
                context,
                self._settings.shows_tracebacks,
                request.uuid,
                self._settings.results_bucket,
                key=f"{task.name}-{request.uuid}-{secrets.token_hex(4)}",
                pure=False,
            )
            outcome = self._wait(future)
            if outcome is not None:
                code, body, body_bytes = outcome
                self._answer(
                    message, request.raw, body, error=code is not None, cacheable=task.cacheable
                )
        if outcome is None:
            log.info("request %s released unfinished at shutdown", request.uuid)
            self._queue.release(message)
            return
        self._finish(
            task.name,
            "error" if code else "ok",
            started,
            request=request.raw,
            code=code,
            result_bytes=body_bytes,
        )

    @contextmanager
    def _kept_invisible(self, message: ReceivedMessage):
        """Extend `message`'s visibility until the block ends, publishing included: a publish
        that retries for longer than the visibility timeout must not let a second receive of
        the same message run beside it."""
        done = threading.Event()
        extend_every = max(1.0, self._settings.visibility_timeout_s / 3)

        def extend_until_done() -> None:
            while not done.wait(extend_every):
                try:
                    self._queue.extend(message)
                except Exception as error:
                    log.warning("extending visibility of %s failed: %s", message.message_id, error)

        extender = threading.Thread(
            target=extend_until_done, name=f"visibility-{message.message_id}", daemon=True
        )
        extender.start()
        try:
            yield
        finally:
            done.set()
            extender.join()

    def _wait(self, future) -> tuple[str | None, bytes | str, int] | None:
        """The task's outcome; None if the shutdown grace period ended first."""
        while True:
            until_release = max(0.1, self._release_at - time.monotonic())
            try:
                return future.result(timeout=min(1.0, until_release))
            except (FutureTimeout, TimeoutError):
                if self._stopping.is_set() and time.monotonic() > self._release_at:
                    future.cancel()
                    return None
            except Exception as error:
                # The Dask side failed (a worker died, the task was lost): answer, don't crash.
                failure = TaskFailed(f"the computation failed: {type(error).__name__}: {error}")
                failure_body = error_body(failure)
                return failure.code, failure_body, len(failure_body)

    def _answer(
        self,
        message: ReceivedMessage,
        raw_request: dict,
        body: bytes | str,
        *,
        error: bool,
        cacheable: bool,
    ) -> None:
        """Publish the response, then delete the message (at least once)."""
        text = response_text(
            raw_request,
            [body],
            error=error,
            cacheable=cacheable,
            put_result=lambda result: self._publisher.put_result(raw_request["uuid"], result),
        )
        self._publisher.publish(text)
        self._queue.delete(message)

    def _finish(
        self,
        task: str,
        outcome: str,
        started: float,
        *,
        request: dict | None = None,
        message_id: str | None = None,
        code: str | None = None,
        result_bytes: int | None = None,
    ) -> None:
        seconds = time.monotonic() - started
        self._health.request_finished(task, outcome, seconds)
        line = {
            "uuid": request.get("uuid") if request else None,
            "experimentId": request.get("experimentId") if request else None,
            "task": task,
            "outcome": outcome,
            "code": code,
            "seconds": round(seconds, 4),
            "resultBytes": result_bytes,
            "messageId": message_id,
        }
        log.info("request %s", dumps({k: v for k, v in line.items() if v is not None}).decode())


def answer_on_dask_worker(
    body: dict,
    context: TaskContext,
    shows_tracebacks: bool,
    request_uuid: str,
    results_bucket: str,
) -> tuple[str | None, bytes | str, int]:
    """`run_task` on a Dask worker, whose body, when it could never travel inline, is stored in
    the results bucket from there: a large answer (every cell's barcode) then never passes
    through the queue worker's process, whose memory stays independent of the data's size.

    Returns (error code or None, the JSON body or the `"bucket/key"` it is stored at, its size).
    """
    code, result_body = run_task(body, context, shows_tracebacks)
    size = len(result_body)
    if size < OFFLOAD_BYTES:
        return code, result_body, size
    try:
        path = store_result(context.aws, results_bucket, request_uuid, result_body)
        return code, path, size
    except Exception as error:
        # The queue worker stores it then, and if that fails too the message comes back.
        log.warning("storing a result from the Dask worker failed: %s", error)
        return code, result_body, size
