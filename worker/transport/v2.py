"""The Cellenics v2 protocol (CELLENICS-V2.md section 1): a request with an `ETag`; its result
compressed with zstd in the v2 results bucket under the ETag, tagged with the experiment and
the task; status heartbeats and the answer as socket.io events through the platform's Redis."""

import base64
import logging
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

import zstandard
from botocore.exceptions import ClientError
from pydantic import Field, ValidationError

from worker.errors import PoisonMessage, TransportError
from worker.jsonio import loads
from worker.settings import AwsSettings, Settings
from worker.store.cell_sets import PlatformApi
from worker.store.result_file import ResultFile
from worker.tasks import V2_TASKS
from worker.tasks.base import Task
from worker.tasks.dispatch import TaskResult, invalid_request
from worker.transport.aws import error_code, mapped_errors, shared_client
from worker.transport.protocol import EnvelopeFields, Protocol, Request
from worker.transport.socketio import SocketEmitter

log = logging.getLogger(__name__)

# The platform's Python worker uses 3. On our answers 2 compresses as well or better in less
# time (one gene's GeneExpression at a million cells: 1.63 MB in 26 ms against 1.85 MB in 34;
# GetEmbedding pca at 200,000 cells: 2.00 MB in 27 ms against 2.06 MB in 51), except a run of
# consecutive cell ids (0, 1, 2, ...), which 3 packs into a third of 2's bytes.
ZSTD_LEVEL = 2
# A result whose compressed bytes are at most this large also travels in the notification.
INLINE_BYTES = 250_000
ETAG = re.compile(r"^[A-Fa-f0-9]{1,128}$")

# The platform's error codes (its R worker's and its Python front's) for ours.
ERROR_CODES = {
    "InvalidRequest": "INVALID_INPUT",
    "UnknownTask": "INVALID_INPUT",
    "CellSetNotFound": "INVALID_INPUT",
    "SourceNotFound": "INVALID_INPUT",
    "UnsupportedFormat": "INVALID_INPUT",
    "GeneNotFound": "R_WORKER_GENE_NOT_FOUND",
    "EmptyCellSet": "R_WORKER_EMPTY_CELL_SET",
    "EmptyRootNodes": "R_WORKER_TRAJECTORY_ANALYSIS_EMPTY_ROOT_NODES",
}
UNEXPECTED_ERROR = "PYTHON_WORKER_ERROR"


class Envelope(EnvelopeFields):
    """The SQS message the platform's API sends (its `WorkRequest.v2.yaml`, and what the API
    adds: `signedUrl`, `Authorization`, `requestProps`)."""

    ETag: str = Field(pattern=ETAG.pattern)
    signedUrl: str | None = None
    Authorization: str | None = None
    requestProps: dict[str, Any] | None = None


def task_body(envelope: Envelope) -> dict[str, Any]:
    """The body a task sees: the request's pagination, which the platform sends beside the body
    (`requestProps.pagination`, or a top-level `pagination` as its older API did), travels in
    it as `pagination`."""
    pagination = (envelope.requestProps or {}).get("pagination")
    if pagination is None:
        pagination = (envelope.model_extra or {}).get("pagination")
    return envelope.body if pagination is None else {**envelope.body, "pagination": pagination}


def task_label(name: str) -> str:
    """The task's name as the platform's status messages show it (`GetEmbedding` ->
    `Embedding`, `DifferentialExpression` -> `Differential Expression`)."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", name.replace("Get", "")).strip()


@dataclass(frozen=True)
class CompressedInBucket:
    """On the Dask worker: a cacheable result compressed and stored under the ETag, tagged as
    the platform's API checks it; small enough, its compressed bytes also travel back for the
    notification. A result file the task wrote there itself is only announced, by its signed
    URL. Errors and other results travel back as they are."""

    aws: AwsSettings
    bucket: str
    etag: str
    experiment_id: str
    task_name: str
    cacheable: bool
    file_written: bool = False

    def __call__(self, code: str | None, body: bytes) -> TaskResult:
        if code is None and self.file_written:
            # The body is the number of bytes the task wrote.
            return TaskResult(None, None, stored_at=f"{self.bucket}/{self.etag}", size=int(body))
        if code is not None or not self.cacheable:
            return TaskResult.inline(code, body)
        compressed = store_compressed(
            self.aws, self.bucket, self.etag, body, self.experiment_id, self.task_name
        )
        return TaskResult(
            code=None,
            body=compressed if len(compressed) <= INLINE_BYTES else None,
            stored_at=f"{self.bucket}/{self.etag}",
            size=len(body),
        )


def result_tags(experiment_id: str, task_name: str) -> tuple[tuple[str, str], ...]:
    """The tags of a stored result; the platform's API serves it only to its experiment."""
    return (("experimentId", experiment_id), ("requestType", task_name))


def store_compressed(
    aws: AwsSettings, bucket: str, etag: str, body: bytes, experiment_id: str, task_name: str
) -> bytes:
    """`body` compressed with zstd, put at `bucket/etag` and tagged; returns the bytes put."""
    compressed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(body)
    with mapped_errors("s3", "PutObject"):
        # Tagged in the same request: a PutObjectTagging after it would be another round trip.
        shared_client("s3", aws).put_object(
            Bucket=bucket,
            Key=etag,
            Body=compressed,
            Tagging=urllib.parse.urlencode(result_tags(experiment_id, task_name)),
        )
    return compressed


class V2Protocol(Protocol):
    name = "v2"

    def __init__(
        self, settings: Settings, emitter: SocketEmitter | None, tasks: dict[str, Task] = V2_TASKS
    ):
        self.tasks = tasks
        self._aws = settings.aws
        self._bucket = settings.v2_results_bucket
        self._api_url = settings.api_url
        self._emitter = emitter

    def recognises(self, raw: dict[str, Any]) -> bool:
        return "ETag" in raw

    def parse(self, raw: dict[str, Any], size: int) -> Request:
        etag = raw.get("ETag")
        if not isinstance(etag, str) or not ETAG.fullmatch(etag):
            raise PoisonMessage("no ETag (hexadecimal) to answer to")
        body = raw.get("body")
        name = body.get("name") if isinstance(body, dict) else None
        task_name = name if isinstance(name, str) else None
        try:
            envelope = Envelope.model_validate(raw)
        except ValidationError as error:
            return Request(raw, etag, None, task_name, None, None, invalid_request(error))
        return Request(
            raw, etag, envelope.experimentId, task_name, task_body(envelope), envelope.timeout
        )

    def skip_reason(self, request: Request) -> str | None:
        """Expired, or answered before: the platform's API serves a result it finds stored."""
        if request.expired():
            return "expired"
        return "cached" if self._stored_result_bytes(request.request_id) else None

    def _stored_result_bytes(self, etag: str) -> int:
        try:
            reply = shared_client("s3", self._aws).head_object(Bucket=self._bucket, Key=etag)
        except ClientError as error:
            if error_code(error) in ("404", "NoSuchKey", "NotFound"):
                return 0
            raise TransportError("s3", "HeadObject", str(error)) from error
        return int(reply.get("ContentLength", 0))

    def platform_api(self, request: Request) -> PlatformApi | None:
        if self._api_url is None:
            return None
        return PlatformApi(self._api_url, request.raw.get("Authorization"))

    def result_file(self, request: Request, task: Task) -> ResultFile | None:
        """A result file goes where the compressed results go: under the ETag, tagged alike."""
        if not task.writes_result_file:
            return None
        return ResultFile(
            self._aws,
            self._bucket,
            request.request_id,
            result_tags(request.experiment_id, task.name),
        )

    def delivery(self, request: Request, task: Task) -> CompressedInBucket:
        return CompressedInBucket(
            self._aws,
            self._bucket,
            request.request_id,
            request.experiment_id,
            task.name,
            task.cacheable,
            task.writes_result_file,
        )

    def started(self, request: Request) -> None:
        self._heartbeat(request, "STARTED_TASK", "Working on the requested task")

    def heartbeat(self, request: Request, progress: dict | None) -> None:
        """Every few seconds while a request computes, with its progress when it reports any."""
        label = f"Working on the requested task {task_label(request.task_name or '')}".strip()
        percent = None
        if progress and progress.get("total"):
            label = f"{progress.get('message') or label} ({progress['done']}/{progress['total']})"
            percent = round(100 * progress["done"] / progress["total"])
        self._emit(
            f"Heartbeat-{request.experiment_id}",
            {
                "type": "WorkResponse",
                "status_code": "STARTED_TASK",
                "user_message": label,
                "progress_percent": percent,
            },
        )

    def answer(self, request: Request, result: TaskResult, *, cacheable: bool) -> None:
        error = result.code is not None
        compressed = result.body if result.stored_at else None
        if not error and cacheable:
            self._heartbeat(
                request, "COMPRESSING_DATA", "Compressing the results for the requested task"
            )
            self._heartbeat(request, "UPLOADING_DATA", "Finalizing results for the requested task")
            if result.stored_at is None:
                # The Dask worker could not store it: store it from here.
                compressed = store_compressed(
                    self._aws,
                    self._bucket,
                    request.request_id,
                    result.body,
                    request.experiment_id,
                    request.task_name,
                )
        response: dict[str, Any] = {
            "cacheable": cacheable and not error,
            "error": error,
            "signedUrl": request.raw.get("signedUrl"),
        }
        if error:
            detail = loads(result.body)["error"]
            response["errorCode"] = ERROR_CODES.get(detail["code"], UNEXPECTED_ERROR)
            response["userMessage"] = detail["message"]
        notification = {"request": request.raw, "response": response, "type": "WorkResponse"}
        if (request.raw.get("requestProps") or {}).get("broadcast"):
            self._emit(f"ExperimentUpdates-{request.raw.get('experimentId')}", notification)
        self._heartbeat(request, "FINISHED_TASK", "Displaying results for the requested task")
        if not error and cacheable and compressed is not None and len(compressed) <= INLINE_BYTES:
            # As text: the browser decodes a string; bytes would arrive as a binary attachment.
            notification = base64.b64encode(compressed).decode("ascii")
        self._emit(f"WorkResponse-{request.request_id}", notification)

    def _heartbeat(self, request: Request, status: str, text: str) -> None:
        if request.experiment_id is None:
            return
        self._emit(
            f"Heartbeat-{request.experiment_id}",
            {
                "type": "WorkResponse",
                "status_code": status,
                "user_message": f"{text} {task_label(request.task_name or '')}".strip(),
            },
        )

    def _emit(self, event: str, payload: Any) -> None:
        if self._emitter is not None:
            self._emitter.emit(event, payload)
