"""The one factory of boto3 clients, so every AWS call shares endpoint, region and retries."""

import boto3
from botocore.config import Config

from worker.settings import AwsSettings

# Standard retry mode backs off on throttling and transient 5xx errors, so transport
# callers see only failures that outlast the retries.
_RETRYING = Config(retries={"mode": "standard", "max_attempts": 6}, max_pool_connections=32)


def aws_client(service: str, aws: AwsSettings):
    return boto3.session.Session().client(service, config=_RETRYING, **aws.client_options())
