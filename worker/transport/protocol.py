"""What the queue loop knows of a message format: a `Protocol` recognises its messages, parses
them into a `Request`, says which tasks it offers and how their results travel, and answers.
Each contract is a sibling module (`seed`, `v2`); the loop picks one per message."""

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, field_validator

from worker.errors import PoisonMessage, WorkerError
from worker.store.cell_sets import PlatformApi
from worker.store.result_file import ResultFile
from worker.tasks.base import Task
from worker.tasks.dispatch import Delivery, TaskResult

# SQS refuses larger messages; a body that still arrives larger is not ours.
SQS_MAX_MESSAGE_BYTES = 1024 * 1024
# An experiment id names storage prefixes: nothing else is accepted (no `/`, no `..`).
EXPERIMENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class EnvelopeFields(BaseModel):
    """What every contract's envelope has: the experiment, the time after which the request is
    no longer wanted, and the task's body. Other fields are kept (and echoed)."""

    model_config = ConfigDict(extra="allow")

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
        """An ISO 8601 time; one with no zone is UTC."""
        if not isinstance(value, str):
            raise ValueError("must be an ISO 8601 date and time")
        moment = datetime.fromisoformat(value)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Request:
    """A received request as its protocol parsed it."""

    raw: dict[str, Any]
    # What logs and keys call it: the seed's uuid, or v2's ETag.
    request_id: str
    experiment_id: str | None
    task_name: str | None
    body: dict[str, Any] | None
    timeout: datetime | None
    # Why it cannot be computed (answered with this error), or None.
    invalid: WorkerError | None = None

    def expired(self, now: datetime | None = None) -> bool:
        return self.timeout is not None and self.timeout < (now or datetime.now(UTC))


class Protocol(ABC):
    """One contract's message format, result delivery and answers."""

    name: str
    tasks: Mapping[str, Task]

    @abstractmethod
    def recognises(self, raw: dict[str, Any]) -> bool:
        """Whether the message is in this format."""

    @abstractmethod
    def parse(self, raw: dict[str, Any], size: int) -> Request:
        """The request, with `invalid` set when it can be answered but not computed; raises
        PoisonMessage when nobody can be answered."""

    def skip_reason(self, request: Request) -> str | None:
        """Why a valid request is dropped unanswered (`expired`), or None to compute it."""
        return "expired" if request.expired() else None

    def platform_api(self, request: Request) -> PlatformApi | None:
        """The platform's API that applies this request's cell set changes, if it does."""
        return None

    def result_file(self, request: Request, task: Task) -> ResultFile | None:
        """Where a task that writes its result as a file writes it, if this protocol offers
        that."""
        return None

    @abstractmethod
    def delivery(self, request: Request, task: Task) -> Delivery:
        """How the Dask worker delivers this request's result."""

    def started(self, request: Request) -> None:  # noqa: B027 (a hook: most protocols say nothing)
        """The request's computing has begun."""

    def heartbeat(self, request: Request, progress: dict | None) -> None:  # noqa: B027
        """The request is still computing (every few seconds), with its latest progress."""

    @abstractmethod
    def answer(self, request: Request, result: TaskResult, *, cacheable: bool) -> None:
        """Publish the response (raises TransportError when it cannot)."""


def decode_message(text: str) -> dict[str, Any]:
    """The message's JSON object; PoisonMessage when it is none."""
    size = len(text.encode())
    if size > SQS_MAX_MESSAGE_BYTES:
        raise PoisonMessage(f"message of {size} bytes exceeds SQS's 1 MiB")
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise PoisonMessage(f"not JSON: {error}") from None
    if not isinstance(raw, dict):
        raise PoisonMessage("not a JSON object")
    return raw


def parse_message(text: str, protocols: Sequence[Protocol]) -> tuple[Protocol, Request]:
    """The protocol a message is in and its request; PoisonMessage when none can answer it."""
    raw = decode_message(text)
    for protocol in protocols:
        if protocol.recognises(raw):
            return protocol, protocol.parse(raw, len(text.encode()))
    raise PoisonMessage("no uuid or ETag to answer to")
