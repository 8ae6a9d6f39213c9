"""The embedded AWS emulator (moto's server) and the resources the worker expects on it."""

import logging
import os
import socket
import sys
import time
from urllib.parse import urlsplit

from botocore.exceptions import ClientError

from worker.jsonio import dumps
from worker.local.children import start_child, stop_child, wait_until_stdin_closes
from worker.settings import Settings
from worker.transport.aws import aws_client

log = logging.getLogger(__name__)


def endpoint_listening(url: str, timeout_s: float = 0.5) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout_s):
            return True
    except OSError:
        return False


class Emulator:
    """moto's server in a child process (worker/local/children.py), bound to 127.0.0.1 only."""

    def __init__(self, port: int):
        """Starts the process; `ready` waits for it to listen (the worker starts other things
        meanwhile)."""
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._process = start_child("worker.local.emulator", str(port))

    def ready(self) -> "Emulator":
        deadline = time.monotonic() + 30
        while not endpoint_listening(self.url, timeout_s=0.2):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the AWS emulator did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        stop_child(self._process)


def serve_until_stdin_closes(port: int) -> None:
    """moto's server on 127.0.0.1:`port` until standard input reaches its end."""
    # moto is a development dependency: imported here, never by a deployed worker.
    from moto import backends
    from moto.server import ThreadedMotoServer

    # As moto's own command sets it: where moto says its endpoints are.
    os.environ.setdefault("MOTO_PORT", str(port))
    # Two costs of every request that tell nothing here, a third of the server's CPU on a
    # zarr store's small GETs: werkzeug's request log line, and moto's listing of its own
    # package folder (a stat per service) to tell which service a host names.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    services = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: services
    _wake_long_polls_on_every_change()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_until_stdin_closes()
    server.stop()


def _wake_long_polls_on_every_change() -> None:
    """moto's long poll on a FIFO queue, as SQS answers it: a message whose group was blocked
    when the poll began is delivered as soon as its group unblocks, and the poll sleeps meanwhile.

    moto 5 takes the blocked groups once at the start of a poll, and its wait for messages
    returns at once while any message is visible, delivered or not: a poll begun while the
    platform's one message group ("work") had a request in flight spun a core until its end,
    and delivered the group's next request only then (a second per v2 request with a 1 s poll,
    up to 20 s with the default). Here each wake-up looks again with the groups as they are,
    and a poll sleeps until a message is added, deleted or made visible again, or for a second
    at most (when visibility timeouts and delays end by themselves).
    """
    from moto.sqs.models import Queue, SQSBackend

    receive_once = SQSBackend.receive_message

    def changed(queue: Queue) -> None:
        with queue._messages_lock:
            queue.poll_wake_ups = getattr(queue, "poll_wake_ups", 0) + 1
            queue._messages_lock.notify_all()

    def receive_message(self, queue_name, count, wait_seconds_timeout, *args, **kwargs):
        queue = self.get_queue(queue_name)
        deadline = time.monotonic() + wait_seconds_timeout
        while True:
            with queue._messages_lock:
                seen = getattr(queue, "poll_wake_ups", 0)
            messages = receive_once(self, queue_name, count, 0, *args, **kwargs)
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0:
                return messages
            with queue._messages_lock:
                queue._messages_lock.wait_for(
                    lambda seen=seen: getattr(queue, "poll_wake_ups", 0) != seen,
                    timeout=min(remaining, 1.0),
                )

    def add_message(self, message) -> None:
        add_one(self, message)
        changed(self)

    def delete_message(self, receipt_handle: str) -> None:
        delete_one(self, receipt_handle)
        changed(self)

    def change_message_visibility(self, queue_name: str, *args, **kwargs) -> None:
        change_one(self, queue_name, *args, **kwargs)
        changed(self.get_queue(queue_name))

    add_one, delete_one = Queue.add_message, Queue.delete_message
    change_one = SQSBackend.change_message_visibility
    Queue.add_message, Queue.delete_message = add_message, delete_message
    SQSBackend.receive_message = receive_message
    SQSBackend.change_message_visibility = change_message_visibility


def provision(settings: Settings) -> str:
    """Create whatever is missing of the queues, topic, buckets and the results subscription.

    Safe to run against an emulator that already has some of them (InfraMock, LocalStack).
    Returns the work queue's URL.
    """
    sqs = aws_client("sqs", settings.aws)
    sns = aws_client("sns", settings.aws)
    s3 = aws_client("s3", settings.aws)

    def queue(name: str, attributes: dict[str, str]) -> str:
        """The queue's URL, created if missing; an existing queue is kept as it is."""
        try:
            return sqs.get_queue_url(QueueName=name)["QueueUrl"]
        except sqs.exceptions.QueueDoesNotExist:
            return sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]

    fifo = {"FifoQueue": "true", "ContentBasedDeduplication": "true"}
    dead_letter_url = queue(settings.dead_letter_queue, fifo)
    dead_letter_arn = sqs.get_queue_attributes(
        QueueUrl=dead_letter_url, AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    redrive = {
        "deadLetterTargetArn": dead_letter_arn,
        "maxReceiveCount": settings.max_receive_count,
    }
    queue_url = queue(
        settings.queue,
        {
            **fifo,
            "VisibilityTimeout": str(settings.visibility_timeout_s),
            "RedrivePolicy": dumps(redrive).decode(),
        },
    )
    topic_arn = sns.create_topic(Name=settings.results_topic)["TopicArn"]
    results_url = queue(settings.results_queue, {})
    results_arn = sqs.get_queue_attributes(QueueUrl=results_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    subscribed = {
        subscription["Endpoint"]
        for subscription in sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    }
    if results_arn not in subscribed:
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=results_arn)
    buckets = {
        settings.results_bucket,
        *([settings.v2_results_bucket] if settings.v2_results_bucket else []),
        settings.processed_bucket,
        settings.cell_sets_bucket,
        *settings.source_buckets,
    }
    for bucket in sorted(buckets):
        try:
            s3.create_bucket(
                Bucket=bucket,
                CreateBucketConfiguration={"LocationConstraint": settings.aws.region},
            )
        except ClientError as error:
            if error.response["Error"]["Code"] not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise
    return queue_url


if __name__ == "__main__":
    serve_until_stdin_closes(int(sys.argv[1]))
