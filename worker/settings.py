"""Typed settings built once from the environment; nothing else reads `os.environ`."""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

ClusterEnv = Literal["development", "test", "staging", "production"]
CLUSTER_ENVS = ("development", "test", "staging", "production")
DEFAULT_ENDPOINT = "http://localhost:4566"


@dataclass(frozen=True)
class AwsSettings:
    """What a process needs to reach AWS (or the emulator); travels to Dask workers."""

    region: str = "eu-west-1"
    endpoint_url: str | None = None
    # Only for an emulator, which accepts any credentials: real AWS credentials come from
    # boto's own chain (environment, profile, service account role), never from here.
    emulator_credentials: bool = False

    def client_options(self) -> dict:
        """Keyword arguments for a boto3 client of this endpoint."""
        options: dict = {"region_name": self.region, "endpoint_url": self.endpoint_url}
        if self.emulator_credentials:
            options |= {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        return options

    def storage_options(self) -> dict:
        """fsspec/s3fs options for this endpoint."""
        client_kwargs: dict = {"region_name": self.region}
        if self.endpoint_url:
            client_kwargs["endpoint_url"] = self.endpoint_url
        options: dict = {"client_kwargs": client_kwargs}
        if self.emulator_credentials:
            options |= {"key": "testing", "secret": "testing"}
        return options


@dataclass(frozen=True)
class Settings:
    cluster_env: ClusterEnv = "development"
    aws: AwsSettings = field(default_factory=AwsSettings)
    queue: str = "development-queue.fifo"
    dead_letter_queue: str = "development-queue-dlq.fifo"
    results_queue: str = "development-results"
    results_topic: str = "work-results-development"
    results_bucket: str = "worker-results-development"
    processed_bucket: str = "processed-matrix-development"
    cell_sets_bucket: str = "cell-sets-development"
    source_buckets: tuple[str, ...] = ("biomage-source-originals", "biomage-source-development")
    store_root: str = "s3://processed-matrix-development"
    dask_scheduler_address: str | None = None
    max_in_flight: int = 4
    poll_wait_s: int = 20
    visibility_timeout_s: int = 60
    shutdown_grace_s: float = 25.0
    health_port: int | None = None
    conf_dir: str = "conf"
    start_emulator: bool = True
    seed_sample: bool = True
    max_receive_count: int = 3

    @property
    def is_deployed(self) -> bool:
        return self.cluster_env in ("staging", "production")

    @property
    def shows_tracebacks(self) -> bool:
        return self.cluster_env == "development"


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean, got {value!r}")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from an environment mapping (default: the process environment)."""
    env = os.environ if environ is None else environ
    cluster_env = env.get("CLUSTER_ENV", "development")
    if cluster_env not in CLUSTER_ENVS:
        raise ValueError(
            f"CLUSTER_ENV must be one of {', '.join(CLUSTER_ENVS)}, not {cluster_env!r}"
        )
    deployed = cluster_env in ("staging", "production")
    endpoint_url = env.get("AWS_ENDPOINT_URL") or (None if deployed else DEFAULT_ENDPOINT)
    processed_bucket = env.get("WORKER_PROCESSED_BUCKET", f"processed-matrix-{cluster_env}")
    default_sources = (
        "biomage-source-originals,biomage-source-development"
        if cluster_env == "development"
        else f"biomage-source-{cluster_env}"
    )
    health_port = env.get("WORKER_HEALTH_PORT")
    return Settings(
        cluster_env=cluster_env,
        aws=AwsSettings(
            emulator_credentials=not deployed and "AWS_ACCESS_KEY_ID" not in env,
            region=env.get("AWS_DEFAULT_REGION", "eu-west-1"),
            endpoint_url=endpoint_url,
        ),
        queue=env.get("WORKER_QUEUE", f"{cluster_env}-queue.fifo"),
        dead_letter_queue=env.get("WORKER_DEAD_LETTER_QUEUE", f"{cluster_env}-queue-dlq.fifo"),
        results_queue=env.get("WORKER_RESULTS_QUEUE", f"{cluster_env}-results"),
        results_topic=env.get("WORKER_RESULTS_TOPIC", f"work-results-{cluster_env}"),
        results_bucket=env.get("WORKER_RESULTS_BUCKET", f"worker-results-{cluster_env}"),
        processed_bucket=processed_bucket,
        cell_sets_bucket=env.get("WORKER_CELL_SETS_BUCKET", f"cell-sets-{cluster_env}"),
        source_buckets=tuple(
            bucket.strip()
            for bucket in env.get("WORKER_SOURCE_BUCKETS", default_sources).split(",")
            if bucket.strip()
        ),
        store_root=env.get("WORKER_STORE_ROOT", f"s3://{processed_bucket}"),
        dask_scheduler_address=env.get("DASK_SCHEDULER_ADDRESS") or None,
        max_in_flight=int(env.get("WORKER_MAX_IN_FLIGHT", "4")),
        poll_wait_s=int(env.get("WORKER_POLL_WAIT", "20")),
        visibility_timeout_s=int(env.get("WORKER_VISIBILITY_TIMEOUT", "60")),
        shutdown_grace_s=float(env.get("WORKER_SHUTDOWN_GRACE", "25")),
        health_port=int(health_port) if health_port else None,
        conf_dir=env.get("WORKER_CONF_DIR", "conf"),
        start_emulator=not deployed and _flag(env.get("WORKER_START_EMULATOR", "true")),
        seed_sample=not deployed and _flag(env.get("WORKER_SEED_SAMPLE", "true")),
    )
