"""The contract's message formats: the request envelope and the response."""

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worker.errors import InvalidRequest, WorkerError
from worker.jsonio import dumps

MAX_MESSAGE_BYTES = 256 * 1024
OFFLOAD_BYTES = int(0.8 * MAX_MESSAGE_BYTES)
# The response echoes the request, escaped inside SNS's wrapper, and only result bodies can move
# to the results bucket: a larger request could never be answered under 256 KiB.
MAX_ECHO_BYTES = MAX_MESSAGE_BYTES // 2
# Field names in error messages come from the request: long ones are cut.
MAX_FIELD_CHARS = 200
EXPERIMENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class PoisonMessage(Exception):
    """A message that cannot be answered: it goes to the dead-letter queue."""


class TaskBody(BaseModel):
    """What every task body has: its name. Task bodies extend this."""

    # Strict: a wrong JSON type (`"5"`, `true` for a number) is an error, not coerced.
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str


class Envelope(BaseModel):
    model_config = ConfigDict(extra="allow")

    uuid: str = Field(pattern=r"^[A-Za-z0-9_-]{1,200}$")
    socketId: str = Field(max_length=200)
    experimentId: str
    timeout: datetime
    body: dict[str, Any]

    @field_validator("experimentId")
    @classmethod
    def _safe_experiment_id(cls, value: str) -> str:
        if not EXPERIMENT_ID.fullmatch(value):
            raise ValueError("must match ^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
        return value

    @field_validator("timeout", mode="before")
    @classmethod
    def _iso_timeout(cls, value: Any) -> datetime:
        if not isinstance(value, str):
            raise ValueError("must be an ISO 8601 date and time")
        moment = datetime.fromisoformat(value)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    def expired(self, now: datetime | None = None) -> bool:
        return self.timeout < (now or datetime.now(UTC))


@dataclass(frozen=True)
class Request:
    """A received request: the JSON exactly as sent, and its envelope or why it is invalid."""

    raw: dict[str, Any]
    envelope: Envelope | None
    invalid: InvalidRequest | None

    @property
    def uuid(self) -> str:
        return str(self.raw["uuid"])


def parse_request(text: str) -> Request:
    """Parse a message body; raises PoisonMessage when there is no one to answer."""
    if len(text.encode()) > MAX_MESSAGE_BYTES:
        raise PoisonMessage(f"message of {len(text.encode())} bytes exceeds 256 KiB")
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise PoisonMessage(f"not JSON: {error}") from None
    if not isinstance(raw, dict):
        raise PoisonMessage("not a JSON object")
    try:
        echoed = len(dumps({"default": dumps(raw).decode()}))
    except TypeError as error:
        raise PoisonMessage(f"cannot be echoed in a response: {error}") from None
    if echoed > MAX_ECHO_BYTES:
        raise PoisonMessage(f"request of {echoed} bytes once escaped is too large to echo")
    if not isinstance(raw.get("uuid"), str) or not raw["uuid"]:
        raise PoisonMessage("no uuid to answer to")
    if not isinstance(raw.get("socketId"), str):
        raise PoisonMessage("no socketId to answer to")
    try:
        return Request(raw=raw, envelope=Envelope.model_validate(raw), invalid=None)
    except ValidationError as error:
        return Request(raw=raw, envelope=None, invalid=invalid_request(error))


def invalid_request(error: ValidationError, prefix: str = "") -> InvalidRequest:
    """An InvalidRequest naming each invalid field of a pydantic validation error."""
    problems = []
    for detail in error.errors(include_url=False, include_input=False)[:10]:
        field = ".".join(str(part) for part in (prefix, *detail["loc"]) if part != "")
        problems.append(f"{field[:MAX_FIELD_CHARS] or '(body)'}: {detail['msg']}")
    return InvalidRequest("invalid request: " + "; ".join(problems))


def error_body(error: WorkerError, traceback_text: str | None = None) -> bytes:
    detail: dict[str, Any] = {"code": error.code, "message": error.message}
    if traceback_text:
        detail["traceback"] = traceback_text
    return dumps({"error": detail})


def response_text(
    raw_request: dict[str, Any],
    result_bodies: list[bytes | str],
    *,
    error: bool,
    cacheable: bool,
    put_result: Callable[[bytes], str],
) -> str:
    """The response's JSON text; bodies move to the results bucket when it is too large.

    A body is its JSON bytes, or a `"bucket/key"` str where it is already stored. Size is
    measured as published (inside SNS's `{"default": ...}` wrapper, escapes included).
    `put_result(body_bytes) -> "bucket/key"` stores one body.
    """

    def response(results: list[dict[str, str]]) -> dict[str, Any]:
        return {
            "request": raw_request,
            "results": results,
            "response": {"cacheable": cacheable and not error, "error": error},
        }

    def result(kind: str, body: str) -> dict[str, str]:
        return {
            "content-type": "application/json",
            "content-encoding": "utf-8",
            "type": kind,
            "body": body,
        }

    inline = all(isinstance(body, bytes) for body in result_bodies)
    # Escaping only grows a body, so bodies this large alone need no measuring.
    if inline and sum(len(body) for body in result_bodies) < OFFLOAD_BYTES:
        text = dumps(response([result("inline", body.decode()) for body in result_bodies])).decode()
        if len(dumps({"default": text})) < OFFLOAD_BYTES:
            return text
    stored = [body if isinstance(body, str) else put_result(body) for body in result_bodies]
    return dumps(response([result("s3-path", path) for path in stored])).decode()
