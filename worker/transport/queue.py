"""The work queue: receive, extend, release, delete, and the dead-letter queue."""

import logging
from dataclasses import dataclass

from botocore.exceptions import ClientError

from worker.settings import Settings
from worker.transport.aws import aws_client

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
        self.url = self._sqs.get_queue_url(QueueName=settings.queue)["QueueUrl"]
        self._dead_letter_url = self._sqs.get_queue_url(QueueName=settings.dead_letter_queue)[
            "QueueUrl"
        ]
        self._visibility_timeout_s = settings.visibility_timeout_s

    def receive(self, max_messages: int, wait_s: int = 20) -> list[ReceivedMessage]:
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

    def extend(self, message: ReceivedMessage) -> None:
        """Keep `message` invisible for another visibility timeout."""
        self._sqs.change_message_visibility(
            QueueUrl=self.url,
            ReceiptHandle=message.receipt_handle,
            VisibilityTimeout=self._visibility_timeout_s,
        )

    def release(self, message: ReceivedMessage) -> None:
        """Make `message` visible again at once, for another worker to take."""
        self._sqs.change_message_visibility(
            QueueUrl=self.url, ReceiptHandle=message.receipt_handle, VisibilityTimeout=0
        )

    def delete(self, message: ReceivedMessage) -> None:
        self._sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message.receipt_handle)

    def dead_letter(self, message: ReceivedMessage, reason: str) -> None:
        """Move `message` to the dead-letter queue now; left in place if it cannot be copied.

        A message left in place still reaches the dead-letter queue through the redrive
        policy once it has been received `maxReceiveCount` times.
        """
        try:
            self._sqs.send_message(
                QueueUrl=self._dead_letter_url,
                MessageBody=message.body,
                MessageGroupId=message.group_id,
                MessageDeduplicationId=message.message_id,
                MessageAttributes={"reason": {"DataType": "String", "StringValue": reason[:1000]}},
            )
        except ClientError as error:
            log.error(
                "message %s could not be copied to the dead-letter queue (%s); left for redrive",
                message.message_id,
                error,
            )
            return
        self.delete(message)
