"""Where responses go: an SNS topic, and the results bucket for bodies too large to travel."""

import secrets

from worker.jsonio import dumps
from worker.settings import AwsSettings
from worker.transport.aws import mapped_errors, shared_client


class SnsTopic:
    def __init__(self, aws: AwsSettings, topic: str):
        self._sns = shared_client("sns", aws)
        self._topic = topic
        self._arn: str | None = None

    @property
    def arn(self) -> str:
        if self._arn is None:
            self._arn = resolve_topic_arn(self._sns, self._topic)
        return self._arn

    def publish(self, response_text: str) -> None:
        with mapped_errors("sns", "Publish"):
            self._sns.publish(
                TopicArn=self.arn,
                Message=dumps({"default": response_text}).decode(),
                MessageStructure="json",
                MessageAttributes={"type": {"DataType": "String", "StringValue": "WorkResponse"}},
            )


def store_result(aws: AwsSettings, bucket: str, key_prefix: str, body: bytes) -> str:
    """Store a result body in `bucket` under `key_prefix` and a random name; returns
    `bucket/key`. Called in the queue worker and in Dask workers alike."""
    key = f"{key_prefix}{secrets.token_hex(16)}"
    with mapped_errors("s3", "PutObject"):
        shared_client("s3", aws).put_object(
            Bucket=bucket, Key=key, Body=body, ContentType="application/json"
        )
    return f"{bucket}/{key}"


def resolve_topic_arn(sns, topic: str) -> str:
    """The ARN of `topic`, given as a name or an ARN."""
    if topic.startswith("arn:"):
        return topic
    with mapped_errors("sns", "ListTopics"):
        for page in sns.get_paginator("list_topics").paginate():
            for listed in page["Topics"]:
                if listed["TopicArn"].rsplit(":", 1)[-1] == topic:
                    return listed["TopicArn"]
    raise LookupError(f"SNS topic {topic!r} does not exist")
