"""The platform's side of the worker's contracts, as our own tools play it (`python -m worker
submit` and `results`, the demo, the tests and the benchmarks). Seed contract: send requests to
the work queue, read the responses SNS delivers to the results queue, fetch bodies stored in the
results bucket. Cellenics v2: send the API's message, read the browser's socket.io events from
Redis, fetch results by their presigned URL."""

import base64
import secrets
import time
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

import msgpack
import redis
import zstandard

from worker.jsonio import dumps, loads
from worker.settings import Settings
from worker.transport.aws import aws_client
from worker.transport.socketio import CHANNEL


def make_request(body: dict, experiment_id: str, **fields: Any) -> dict:
    """A request envelope for `body`, with a fresh uuid and a far timeout."""
    return {
        "uuid": str(uuid.uuid4()),
        "socketId": "local-client",
        "experimentId": experiment_id,
        "timeout": "2099-12-31 00:00:00",
        "body": body,
        **fields,
    }


class ApiClient:
    """Sends requests and reads their responses; responses read for other requests are kept
    until asked for."""

    def __init__(self, settings: Settings):
        self._sqs = aws_client("sqs", settings.aws)
        self._s3 = aws_client("s3", settings.aws)
        self.queue_url = self._sqs.get_queue_url(QueueName=settings.queue)["QueueUrl"]
        self.results_url = self._sqs.get_queue_url(QueueName=settings.results_queue)["QueueUrl"]
        self._received: dict[str, dict] = {}

    def send(self, request: dict | str) -> str:
        """Send a request (an envelope, or any text); returns the SQS message id."""
        text = request if isinstance(request, str) else dumps(request).decode()
        return self._sqs.send_message(
            QueueUrl=self.queue_url, MessageBody=text, MessageGroupId=uuid.uuid4().hex
        )["MessageId"]

    def published(self, wait_s: int = 1) -> list[dict]:
        """The responses delivered to the results queue since the last read (deleted once
        read), unwrapped from SNS's notification."""
        reply = self._sqs.receive_message(
            QueueUrl=self.results_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s
        )
        responses = []
        for message in reply.get("Messages", []):
            notification = loads(message["Body"])
            if notification["MessageAttributes"]["type"]["Value"] != "WorkResponse":
                raise ValueError(f"not a WorkResponse: {notification['MessageAttributes']}")
            responses.append(loads(notification["Message"]))
            self._sqs.delete_message(
                QueueUrl=self.results_url, ReceiptHandle=message["ReceiptHandle"]
            )
        return responses

    def response(self, request_uuid: str, timeout_s: float = 120) -> dict:
        """The response to `request_uuid`; TimeoutError if none comes within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while request_uuid not in self._received:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no response for {request_uuid} within {timeout_s} s")
            for response in self.published(wait_s=1):
                self._received[response["request"]["uuid"]] = response
        return self._received.pop(request_uuid)

    def ask(self, body: dict, experiment_id: str, timeout_s: float = 120, **fields) -> dict:
        """Send `body` for the experiment and wait for its response."""
        request = make_request(body, experiment_id, **fields)
        self.send(request)
        return self.response(request["uuid"], timeout_s)

    def result(self, response: dict) -> Any:
        """The response's (first) result body as JSON, fetched from the results bucket when it
        was stored there."""
        result = response["results"][0]
        if result["type"] == "s3-path":
            bucket, key = result["body"].split("/", 1)
            return loads(self._s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        return loads(result["body"])


@dataclass(frozen=True)
class V2Answer:
    """What the platform's browser gets for a v2 request: the WorkResponse notification (the
    object form, or None when the result came inline), the result (decoded JSON, or None), and
    the heartbeats seen for the experiment until then."""

    notification: dict | None
    result: Any
    heartbeats: list[dict]


class V2Client:
    """The platform's side of Cellenics v2, as our tools play it: the API's SQS message (with a
    presigned URL of the result), and the browser's socket.io events read from Redis."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._sqs = aws_client("sqs", settings.aws)
        self._s3 = aws_client("s3", settings.aws)
        self.queue_url = self._sqs.get_queue_url(QueueName=settings.queue)["QueueUrl"]
        self._redis = redis.Redis.from_url(settings.redis_url)
        # Subscribed before anything is sent, so no event is missed.
        self._events = self._redis.pubsub(ignore_subscribe_messages=True)
        self._events.subscribe(CHANNEL)
        self.seen: list[tuple[str, Any]] = []

    def close(self) -> None:
        self._events.close()
        self._redis.close()

    def message(
        self,
        body: dict,
        experiment_id: str,
        *,
        request_props: dict | None = None,
        authorization: str | None = "Bearer local-client",
        **fields: Any,
    ) -> dict:
        """The SQS message the platform's API would send for `body`."""
        etag = secrets.token_hex(16)
        signed_url = self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self._settings.v2_results_bucket, "Key": etag}
        )
        return {
            "signedUrl": signed_url,
            "ETag": etag,
            "Authorization": authorization,
            "experimentId": experiment_id,
            "timeout": "2099-12-31T00:00:00.000Z",
            "body": body,
            "requestProps": {"broadcast": False, "cacheUniquenessKey": None}
            | (request_props or {}),
            **fields,
        }

    def send(self, message: dict | str, group_id: str = "work") -> None:
        """Put `message` on the work queue, in the FIFO message group the API uses (`work`)
        unless told another."""
        text = message if isinstance(message, str) else dumps(message).decode()
        self._sqs.send_message(QueueUrl=self.queue_url, MessageBody=text, MessageGroupId=group_id)

    def events(self, wait_s: float = 1.0) -> list[tuple[str, Any]]:
        """The socket.io events emitted since the last call (also kept in `seen`), waiting up
        to `wait_s` for the first."""
        events = []
        timeout = wait_s
        while True:
            message = self._events.get_message(timeout=timeout)
            if message is None:
                break
            # Once one has come, take what else is there without waiting.
            timeout = 0.0
            _, packet, _ = msgpack.unpackb(message["data"], raw=False)
            event, payload = packet["data"]
            events.append((event, payload))
        self.seen.extend(events)
        return events

    def notification(self, message: dict, timeout_s: float = 120) -> Any:
        """The payload of the request's WorkResponse event, once it has come."""
        wanted = f"WorkResponse-{message['ETag']}"
        deadline = time.monotonic() + timeout_s
        while not any(event == wanted for event, _ in self.seen):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {wanted} within {timeout_s} s")
            self.events()
        return next(payload for event, payload in self.seen if event == wanted)

    def answer(self, message: dict, timeout_s: float = 120, *, as_file: bool = False) -> V2Answer:
        """Wait for the request's WorkResponse event and read its result as the browser does:
        JSON, or with `as_file` the bytes as they are (a file the browser saves)."""
        payload = self.notification(message, timeout_s)
        heartbeats = [
            payload
            for event, payload in self.seen
            if event == f"Heartbeat-{message['experimentId']}"
        ]
        if isinstance(payload, str):
            return V2Answer(None, decode_result(base64.b64decode(payload)), heartbeats)
        response = payload["response"]
        if response["error"] or not response["cacheable"]:
            return V2Answer(payload, None, heartbeats)
        with urllib.request.urlopen(response["signedUrl"], timeout=30) as download:
            stored = download.read()
        return V2Answer(payload, stored if as_file else decode_result(stored), heartbeats)


def decode_result(stored: bytes) -> Any:
    """A v2 result's JSON from its zstd bytes, as the platform's browser decodes them."""
    return loads(zstandard.ZstdDecompressor().decompressobj().decompress(stored))
