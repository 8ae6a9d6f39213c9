"""The seed contract (CONTRACT.md): its request envelope, and responses published to SNS with
large bodies in the results bucket."""

from dataclasses import dataclass
from typing import Any

from pydantic import Field, ValidationError

from worker.errors import InvalidRequest, PoisonMessage
from worker.jsonio import dumps
from worker.settings import AwsSettings, Settings
from worker.tasks import TASKS
from worker.tasks.base import Task
from worker.tasks.dispatch import TaskResult, invalid_request
from worker.transport.protocol import EnvelopeFields, Protocol, Request
from worker.transport.results import SnsTopic, store_result

MAX_MESSAGE_BYTES = 256 * 1024
OFFLOAD_BYTES = int(0.8 * MAX_MESSAGE_BYTES)
# The response echoes the request, escaped inside SNS's wrapper, and only result bodies can move
# to the results bucket: a larger request is answered with a shortened echo.
MAX_ECHO_BYTES = MAX_MESSAGE_BYTES // 2


class Envelope(EnvelopeFields):
    uuid: str = Field(pattern=r"^[A-Za-z0-9_-]{1,200}$")
    socketId: str = Field(max_length=200)


@dataclass(frozen=True)
class StoredWhenLarge:
    """A body too large to travel inside a response is stored in the results bucket by the
    Dask worker that computed it, so it never passes through the queue worker's memory."""

    aws: AwsSettings
    bucket: str
    request_uuid: str

    def __call__(self, code: str | None, body: bytes) -> TaskResult:
        if len(body) < OFFLOAD_BYTES:
            return TaskResult.inline(code, body)
        path = store_result(self.aws, self.bucket, f"{self.request_uuid}/", body)
        return TaskResult(code=code, body=None, stored_at=path, size=len(body))


class SeedProtocol(Protocol):
    name = "seed"

    def __init__(self, settings: Settings, tasks: dict[str, Task] = TASKS):
        self.tasks = tasks
        self._aws = settings.aws
        self._results_bucket = settings.results_bucket
        self._topic = SnsTopic(settings.aws, settings.results_topic)

    def recognises(self, raw: dict[str, Any]) -> bool:
        return "uuid" in raw

    def parse(self, raw: dict[str, Any], size: int) -> Request:
        if not isinstance(raw.get("uuid"), str) or not raw["uuid"]:
            raise PoisonMessage("no uuid to answer to")
        if not isinstance(raw.get("socketId"), str):
            raise PoisonMessage("no socketId to answer to")
        body = raw.get("body")
        name = body.get("name") if isinstance(body, dict) else None
        too_large = _too_large_to_echo(raw, size)
        if too_large is not None:
            return Request(
                raw=_shortened(raw),
                request_id=raw["uuid"],
                experiment_id=None,
                task_name=name if isinstance(name, str) else None,
                body=None,
                timeout=None,
                invalid=InvalidRequest(f"invalid request: {too_large}"),
            )
        try:
            envelope = Envelope.model_validate(raw)
        except ValidationError as error:
            return Request(
                raw=raw,
                request_id=raw["uuid"],
                experiment_id=None,
                task_name=name if isinstance(name, str) else None,
                body=None,
                timeout=None,
                invalid=invalid_request(error),
            )
        return Request(
            raw=raw,
            request_id=envelope.uuid,
            experiment_id=envelope.experimentId,
            task_name=name if isinstance(name, str) else None,
            body=envelope.body,
            timeout=envelope.timeout,
        )

    def delivery(self, request: Request, task: Task) -> StoredWhenLarge:
        return StoredWhenLarge(self._aws, self._results_bucket, request.request_id)

    def answer(self, request: Request, result: TaskResult, *, cacheable: bool) -> None:
        error = result.code is not None
        self._topic.publish(
            response_text(
                request.raw,
                result,
                cacheable=cacheable and not error,
                put_result=lambda body: store_result(
                    self._aws, self._results_bucket, f"{request.request_id}/", body
                ),
            )
        )


def _too_large_to_echo(raw: dict[str, Any], size: int) -> str | None:
    """Why the response could not echo the request inside SNS's 256 KiB, or None."""
    if size > MAX_MESSAGE_BYTES:
        return f"the request is {size} bytes; requests are limited to {MAX_MESSAGE_BYTES} bytes"
    try:
        echoed = len(dumps({"default": dumps(raw).decode()}))
    except TypeError as error:
        return f"the request cannot be echoed in a response: {error}"
    if echoed > MAX_ECHO_BYTES:
        return (
            f"the request is {echoed} bytes once escaped in the response; the response can echo "
            f"at most {MAX_ECHO_BYTES} bytes"
        )
    return None


def _shortened(raw: dict[str, Any]) -> dict[str, Any]:
    """The envelope of a request too large to echo whole: its identifying fields and the
    task's name."""
    shortened = {
        field: raw[field]
        for field in ("uuid", "socketId", "experimentId", "timeout")
        if isinstance(raw.get(field), str) and len(raw[field]) <= 1000
    }
    body = raw.get("body")
    if isinstance(body, dict) and isinstance(body.get("name"), str):
        shortened["body"] = {"name": body["name"][:200]}
    return shortened


def response_text(raw_request: dict[str, Any], result: TaskResult, *, cacheable: bool, put_result):
    """The response's JSON text; the body moves to the results bucket when it is too large.

    Size is measured as published (inside SNS's `{"default": ...}` wrapper, escapes included).
    `put_result(body_bytes) -> "bucket/key"` stores a body.
    """

    def response(kind: str, body: str) -> dict[str, Any]:
        return {
            "request": raw_request,
            "results": [
                {
                    "content-type": "application/json",
                    "content-encoding": "utf-8",
                    "type": kind,
                    "body": body,
                }
            ],
            "response": {"cacheable": cacheable, "error": result.code is not None},
        }

    if result.stored_at is not None:
        return dumps(response("s3-path", result.stored_at)).decode()
    # Escaping only grows a body, so a body this large alone needs no measuring.
    if result.size < OFFLOAD_BYTES:
        text = dumps(response("inline", result.body.decode())).decode()
        if len(dumps({"default": text})) < OFFLOAD_BYTES:
            return text
    return dumps(response("s3-path", put_result(result.body))).decode()
