"""The embedded emulator's SQS, where it must answer as SQS does for the worker to be tested."""

import threading
import time

from worker.transport.aws import aws_client


def test_a_long_poll_gets_the_next_message_of_its_group_once_the_group_unblocks(settings):
    """A FIFO group's next message goes to a poll begun while the group was blocked, as soon
    as the message in flight is deleted: the platform sends every request in one group."""
    sqs = aws_client("sqs", settings.aws)
    url = sqs.get_queue_url(QueueName=settings.queue)["QueueUrl"]
    for body in ("first", "second"):
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId="work")
    (first,) = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)["Messages"]
    assert first["Body"] == "first"
    assert "Messages" not in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)

    polled = {}

    def poll() -> None:
        polled.update(
            aws_client("sqs", settings.aws).receive_message(QueueUrl=url, WaitTimeSeconds=10)
        )

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.5)  # the poll is under way before the group unblocks
    sqs.delete_message(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"])
    poller.join()
    assert [message["Body"] for message in polled["Messages"]] == ["second"]
