"""The one factory of boto3 clients, so every AWS call shares endpoint, region and retries, and
the one place boto's errors become the worker's."""

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from worker.errors import TransportError
from worker.settings import AwsSettings

# Standard retry mode backs off on throttling and transient 5xx errors, so transport
# callers see only failures that outlast the retries.
_RETRYING = Config(retries={"mode": "standard", "max_attempts": 6}, max_pool_connections=32)


# One session per process: making one costs a tenth of a second of CPU (botocore registers its
# handlers, inspecting each one's signature), and its loader keeps the service models its
# clients share. A session is not thread-safe, so clients are made from it one at a time.
_SESSION_LOCK = threading.Lock()


@functools.cache
def _session() -> boto3.session.Session:
    return boto3.session.Session()


def aws_client(service: str, aws: AwsSettings):
    with _SESSION_LOCK:
        return _session().client(service, config=_RETRYING, **aws.client_options())


@functools.cache
def shared_client(service: str, aws: AwsSettings):
    """One client per service and endpoint in this process (boto3 clients are thread-safe)."""
    return aws_client(service, aws)


def error_code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def transport_error(service: str, operation: str, error: Exception) -> TransportError:
    """boto's `error` of a call as the worker's."""
    reason = f"{error_code(error)}: {error}" if isinstance(error, ClientError) else str(error)
    return TransportError(service, operation, reason)


@contextmanager
def mapped_errors(service: str, operation: str) -> Iterator[None]:
    """Raise boto's errors inside the block as TransportError naming the call."""
    try:
        yield
    except (ClientError, BotoCoreError) as error:
        raise transport_error(service, operation, error) from error
