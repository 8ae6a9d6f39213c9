"""The API's side of the seed contract, as our own tools play it (`python -m worker submit` and
`results`, the demo, the tests and the benchmarks): send requests to the work queue, read the
responses SNS delivers to the results queue, fetch bodies stored in the results bucket."""

import time
import uuid
from typing import Any

from worker.jsonio import dumps, loads
from worker.settings import Settings
from worker.transport.aws import aws_client


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
