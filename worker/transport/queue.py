"""The work queue: receive, a lease that keeps a message invisible while it is handled, delete,
release, and the dead-letter queue."""

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from worker.errors import TransportError
from worker.settings import Settings
from worker.transport.aws import aws_client, mapped_errors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceivedMessage:
    body: str
    receipt_handle: str
    message_id: str
    receive_count: int
    group_id: str


class WorkQueue:
    def __init__(self, settings: Settings):
        self._sqs = aws_client("sqs", settings.aws)
        with mapped_errors("sqs", "GetQueueUrl"):
            self.url = self._sqs.get_queue_url(QueueName=settings.queue)["QueueUrl"]
            self._dead_letter_url = self._sqs.get_queue_url(QueueName=settings.dead_letter_queue)[
                "QueueUrl"
            ]
        self._visibility_timeout_s = settings.visibility_timeout_s

    def receive(self, max_messages: int, wait_s: int = 20) -> list[ReceivedMessage]:
        with mapped_errors("sqs", "ReceiveMessage"):
            reply = self._sqs.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=max(1, min(10, max_messages)),
                WaitTimeSeconds=wait_s,
                VisibilityTimeout=self._visibility_timeout_s,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "MessageGroupId"],
            )
        return [
            ReceivedMessage(
                body=message["Body"],
                receipt_handle=message["ReceiptHandle"],
                message_id=message["MessageId"],
                receive_count=int(message["Attributes"].get("ApproximateReceiveCount", "1")),
                group_id=message["Attributes"].get("MessageGroupId", "worker"),
            )
            for message in reply.get("Messages", [])
        ]

    @contextmanager
    def lease(self, message: ReceivedMessage) -> Iterator["Lease"]:
        """Keep `message` invisible until the block ends, extending its visibility every third
        of the timeout: whatever runs inside (computing, publishing with retries) never has a
        second receive of the same message running beside it."""
        lease = Lease(self, message)
        extender = threading.Thread(
            target=lease.extend_until_ended, name=f"lease-{message.message_id}", daemon=True
        )
        extender.start()
        try:
            yield lease
        finally:
            lease.ended.set()
            extender.join()

    def extend(self, message: ReceivedMessage) -> None:
        """Keep `message` invisible for another visibility timeout."""
        self._change_visibility(message, self._visibility_timeout_s)

    def release(self, message: ReceivedMessage) -> None:
        """Make `message` visible again at once, for another worker to take."""
        self._change_visibility(message, 0)

    def _change_visibility(self, message: ReceivedMessage, seconds: int) -> None:
        with mapped_errors("sqs", "ChangeMessageVisibility"):
            self._sqs.change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=message.receipt_handle, VisibilityTimeout=seconds
            )

    def delete(self, message: ReceivedMessage) -> None:
        with mapped_errors("sqs", "DeleteMessage"):
            self._sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message.receipt_handle)

    def dead_letter(self, message: ReceivedMessage, reason: str) -> bool:
        """Move `message` to the dead-letter queue now; returns False (and leaves it in place)
        if it cannot be copied there.

        A message left in place still reaches the dead-letter queue through the redrive
        policy once it has been received `maxReceiveCount` times.
        """
        try:
            with mapped_errors("sqs", "SendMessage"):
                self._sqs.send_message(
                    QueueUrl=self._dead_letter_url,
                    MessageBody=message.body,
                    MessageGroupId=message.group_id,
                    MessageDeduplicationId=message.message_id,
                    MessageAttributes={
                        "reason": {"DataType": "String", "StringValue": reason[:1000]}
                    },
                )
        except TransportError as error:
            log.error("message %s stays for the redrive policy: %s", message.message_id, error)
            return False
        self.delete(message)
        return True


class Lease:
    """A received message held invisible while it is handled; ended by the `lease` block."""

    def __init__(self, queue: WorkQueue, message: ReceivedMessage):
        self.queue = queue
        self.message = message
        self.ended = threading.Event()
        self._extend_every_s = max(1.0, queue._visibility_timeout_s / 3)

    def extend_until_ended(self) -> None:
        while not self.ended.wait(self._extend_every_s):
            try:
                self.queue.extend(self.message)
            except TransportError as error:
                log.warning("extending the lease of %s failed: %s", self.message.message_id, error)

    def delete(self) -> None:
        self.ended.set()
        self.queue.delete(self.message)

    def release(self) -> None:
        self.ended.set()
        self.queue.release(self.message)
