"""An HTTP proxy on loopback in front of the AWS emulator: it records every request, can delay
the requests of a service (S3 as a real region answers, 25 ms before the first byte), and can
fail chosen ones. The benchmarks measure S3 latency through it; the tests inject faults and
check which keys the worker touches."""

import http.client
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

# SigV4 names the service: `Credential=KEY/DATE/REGION/SERVICE/aws4_request`.
SERVICE = re.compile(rb"/(\w+)/aws4_request")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@dataclass
class Fault:
    status: int
    remaining: int | None  # None: until cleared
    matching: bytes | None  # only requests whose body holds these bytes


@dataclass(frozen=True)
class Recorded:
    service: str
    method: str
    path: str  # unquoted, without the query
    query: str
    sent_bytes: int  # the request's body

    @property
    def key(self) -> str:
        """The S3 object or prefix requested: the path, or the bucket and the `prefix` a
        listing asks for."""
        prefix = parse_qs(self.query).get("prefix")
        return f"{self.path.rstrip('/')}/{prefix[0]}" if prefix else self.path


@dataclass(frozen=True)
class Totals:
    """What a service was sent through the proxy so far."""

    requests: int = 0
    sent_bytes: int = 0
    received_bytes: int = 0  # response bodies

    def __sub__(self, earlier: "Totals") -> "Totals":
        return Totals(
            self.requests - earlier.requests,
            self.sent_bytes - earlier.sent_bytes,
            self.received_bytes - earlier.received_bytes,
        )


class AwsProxy:
    """Forwards everything to `upstream`, after `delay_s[service]`, except the requests a fault
    is set for."""

    def __init__(self, upstream: str, delay_s: Mapping[str, float] | None = None):
        self._upstream = urlsplit(upstream).netloc
        self._faults: dict[str, Fault] = {}
        self._lock = threading.Lock()
        self.delay_s = dict(delay_s or {})
        self.failed: dict[str, int] = {}
        self.recorded: list[Recorded] = []
        self._totals: dict[str, Totals] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def fail(
        self, service: str, status: int = 503, times: int | None = None, matching: bytes = b""
    ) -> None:
        """Answer the next `times` requests to `service` (all, if None) with `status`."""
        with self._lock:
            self._faults[service] = Fault(status, times, matching or None)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def requests_of(self, service: str) -> list[Recorded]:
        with self._lock:
            return [request for request in self.recorded if request.service == service]

    def totals(self, service: str) -> Totals:
        """Requests and bytes of `service` since the proxy started (`forget` keeps them)."""
        with self._lock:
            return self._totals.get(service, Totals())

    def forget(self) -> None:
        """Forget the requests recorded so far."""
        with self._lock:
            self.recorded.clear()

    def _answered(self, service: str, received_bytes: int) -> None:
        with self._lock:
            totals = self._totals.get(service, Totals())
            self._totals[service] = Totals(
                totals.requests, totals.sent_bytes, totals.received_bytes + received_bytes
            )

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _arrived(self, service: str, method: str, path: str, body: bytes) -> int | None:
        """Record a request; the status to fail it with, or None to forward it."""
        with self._lock:
            parts = urlsplit(path)
            self.recorded.append(
                Recorded(service, method, unquote(parts.path), parts.query, len(body))
            )
            totals = self._totals.get(service, Totals())
            self._totals[service] = Totals(
                totals.requests + 1, totals.sent_bytes + len(body), totals.received_bytes
            )
            fault = self._faults.get(service)
            if fault is None or (fault.matching and fault.matching not in body):
                return None
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining == 0:
                    del self._faults[service]
            self.failed[service] = self.failed.get(service, 0) + 1
            return fault.status


def _handler_for(proxy: AwsProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # The headers and the body go out in two writes: with Nagle's algorithm the body would
        # wait for the client's delayed ACK, some 40 ms on every response with a body.
        disable_nagle_algorithm = True

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            found = SERVICE.search(self.headers.get("Authorization", "").encode())
            service = found.group(1).decode() if found else ""
            status = proxy._arrived(service, self.command, self.path, body)
            if status is not None:
                self._reply(status, {}, _error(status))
                return
            delay = proxy.delay_s.get(service, 0.0)
            if delay:
                time.sleep(delay)
            upstream = http.client.HTTPConnection(proxy._upstream, timeout=60)
            try:
                upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
                response = upstream.getresponse()
                answer = response.read()
                proxy._answered(service, len(answer))
                self._reply(response.status, response.headers, answer)
            finally:
                upstream.close()

        def _reply(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            length = headers.get("Content-Length") if self.command == "HEAD" else len(body)
            self.send_header("Content-Length", str(length or 0))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def _error(status: int) -> bytes:
    code = "ServiceUnavailable" if status >= 500 else "InvalidParameter"
    return (
        f"<ErrorResponse><Error><Type>Receiver</Type><Code>{code}</Code>"
        f"<Message>injected by the proxy</Message></Error></ErrorResponse>"
    ).encode()
