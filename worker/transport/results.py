"""Where responses go: the SNS results topic, and the results bucket for large bodies."""

import functools
import secrets

from worker.jsonio import dumps
from worker.settings import AwsSettings, Settings
from worker.transport.aws import aws_client


class ResultPublisher:
    def __init__(self, settings: Settings):
        self._sns = aws_client("sns", settings.aws)
        self._aws = settings.aws
        self.bucket = settings.results_bucket
        self.topic_arn = resolve_topic_arn(self._sns, settings.results_topic)

    def publish(self, response_text: str) -> None:
        self._sns.publish(
            TopicArn=self.topic_arn,
            Message=dumps({"default": response_text}).decode(),
            MessageStructure="json",
            MessageAttributes={"type": {"DataType": "String", "StringValue": "WorkResponse"}},
        )

    def put_result(self, request_uuid: str, body: bytes) -> str:
        """Store a result body in the results bucket; returns `bucket/key`."""
        return store_result(self._aws, self.bucket, request_uuid, body)


def store_result(aws: AwsSettings, bucket: str, request_uuid: str, body: bytes) -> str:
    """Store a result body in `bucket` under the request's uuid; returns `bucket/key`. Called
    in the queue worker and in Dask workers, each with one S3 client per process."""
    key = f"{request_uuid}/{secrets.token_hex(16)}"
    _s3(aws).put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    return f"{bucket}/{key}"


@functools.cache
def _s3(aws: AwsSettings):
    return aws_client("s3", aws)


def resolve_topic_arn(sns, topic: str) -> str:
    """The ARN of `topic`, given as a name or an ARN."""
    if topic.startswith("arn:"):
        return topic
    for page in sns.get_paginator("list_topics").paginate():
        for listed in page["Topics"]:
            if listed["TopicArn"].rsplit(":", 1)[-1] == topic:
                return listed["TopicArn"]
    raise LookupError(f"SNS topic {topic!r} does not exist")
