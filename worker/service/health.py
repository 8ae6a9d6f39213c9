"""Liveness probe and Prometheus metrics over HTTP, for Kubernetes and for scraping."""

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

OUTCOMES = frozenset({"ok", "error", "expired", "cached", "poison", "released", "failed"})

# Tasks range from a few milliseconds (ListGenes) to minutes (clustering a million cells).
TASK_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

TEXT = "text/plain; charset=utf-8"


class HealthServer:
    """Serves `GET /healthz` (is the queue loop still polling, and does every check pass?) and
    `GET /metrics`.

    Each instance has its own metrics registry, so several can live in one process.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        stale_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._address = (host, port)
        self._stale_after_s = stale_after_s
        # The time staleness is measured in; tests pass a clock they move themselves.
        self._clock = clock
        self._last_poll = clock()
        self._checks: list[Callable[[], str | None]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

        self.registry = CollectorRegistry()
        self._requests = Counter(
            "worker_requests",
            "Requests finished, by task and outcome.",
            ["task", "outcome"],
            registry=self.registry,
        )
        self._task_seconds = Histogram(
            "worker_task_seconds",
            "Seconds from receiving a request to finishing it, by task.",
            ["task"],
            buckets=TASK_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self._in_flight = Gauge(
            "worker_requests_in_flight",
            "Requests received and not yet finished.",
            registry=self.registry,
        )

    def start(self) -> None:
        """Bind the port and serve from a daemon thread."""
        # The loop has not polled yet: give it stale_after_s from now before reporting stale.
        self._last_poll = self._clock()
        self._httpd = ThreadingHTTPServer(self._address, _handler_for(self))
        # serve_forever notices shutdown() only between polls: poll often so stop() returns at once.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="health-server",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
        self._httpd = None
        self._thread = None

    @property
    def port(self) -> int:
        """The bound port: the one the system picked when constructed with port 0."""
        if self._httpd is None:
            raise RuntimeError("the health server is not started")
        return self._httpd.server_port

    def mark_polled(self) -> None:
        """Record that the queue loop is alive: it has just received, or waits on purpose."""
        self._last_poll = self._clock()

    def add_check(self, check: Callable[[], str | None]) -> None:
        """Report unhealthy while `check` returns a reason (the first failing check's is shown)."""
        self._checks.append(check)

    def problem(self) -> str | None:
        """Why the worker is unhealthy, or None: a failing check, or a queue loop that has not
        polled within stale_after_s (nor started that recently)."""
        for check in self._checks:
            reason = check()
            if reason is not None:
                return reason
        if self._clock() - self._last_poll > self._stale_after_s:
            return "stale: the queue loop has not polled"
        return None

    def request_finished(self, task: str, outcome: str, seconds: float) -> None:
        """Count one finished request and observe how long it took."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}, not {outcome!r}")
        self._requests.labels(task=task, outcome=outcome).inc()
        self._task_seconds.labels(task=task).observe(seconds)

    def in_flight(self) -> AbstractContextManager:
        """Count the requests running inside this context manager."""
        return self._in_flight.track_inprogress()


def _handler_for(health: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/healthz":
                problem = health.problem()
                if problem is None:
                    self._reply(200, b"ok", TEXT)
                else:
                    self._reply(503, problem.encode(), TEXT)
            elif path == "/metrics":
                self._reply(200, generate_latest(health.registry), CONTENT_TYPE_LATEST)
            else:
                self._reply(404, b"not found", TEXT)

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Probes and scrapes arrive every few seconds; a line each would drown the request log.
            pass

    return Handler
