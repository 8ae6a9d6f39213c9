"""Typed settings, built once from the environment by pydantic-settings: a bad value is an error
naming its variable. Only this module and the Dask worker preload read the environment."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ClusterEnv = Literal["development", "test", "staging", "production"]
DEFAULT_ENDPOINT = "http://localhost:4566"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


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
        # One GET per whole-object read: with more, s3fs first asks the object's size (a HEAD,
        # one more round trip) to fetch parts side by side. zarr already reads objects side
        # by side, and ours are at most a shard of tens of MB.
        options: dict = {"client_kwargs": client_kwargs, "max_concurrency": 1}
        if self.emulator_credentials:
            options |= {"key": "testing", "secret": "testing"}
        return options


def _variable(name: str, default=None, **constraints):
    """A field read from the environment variable `name`."""
    return Field(default, validation_alias=AliasChoices(name), **constraints)


class Settings(BaseSettings):
    """Every setting of the worker; names that depend on `CLUSTER_ENV` are filled in from it."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=True)

    cluster_env: ClusterEnv = _variable("CLUSTER_ENV", "development")
    aws_region: str = _variable("AWS_DEFAULT_REGION", "eu-west-1", min_length=1)
    aws_endpoint_url: str | None = _variable("AWS_ENDPOINT_URL")
    # Read only to know whether credentials were given; boto reads them itself.
    aws_access_key_id: SecretStr | None = _variable("AWS_ACCESS_KEY_ID")
    queue: str = _variable("WORKER_QUEUE", "")
    dead_letter_queue: str = _variable("WORKER_DEAD_LETTER_QUEUE", "")
    results_queue: str = _variable("WORKER_RESULTS_QUEUE", "")
    results_topic: str = _variable("WORKER_RESULTS_TOPIC", "")
    results_bucket: str = _variable("WORKER_RESULTS_BUCKET", "")
    processed_bucket: str = _variable("WORKER_PROCESSED_BUCKET", "")
    cell_sets_bucket: str = _variable("WORKER_CELL_SETS_BUCKET", "")
    source_buckets: Annotated[tuple[str, ...], NoDecode] = _variable("WORKER_SOURCE_BUCKETS", ())
    store_root: str = _variable("WORKER_STORE_ROOT", "")
    dask_scheduler_address: str | None = _variable("DASK_SCHEDULER_ADDRESS")
    max_in_flight: int = _variable("WORKER_MAX_IN_FLIGHT", 4, ge=1, le=64)
    poll_wait_s: int = _variable("WORKER_POLL_WAIT", 20, ge=0, le=20)
    visibility_timeout_s: int = _variable("WORKER_VISIBILITY_TIMEOUT", 60, ge=1, le=43_200)
    shutdown_grace_s: float = _variable("WORKER_SHUTDOWN_GRACE", 25.0, ge=0)
    health_port: int | None = _variable("WORKER_HEALTH_PORT", None, ge=0, le=65_535)
    conf_dir: str = _variable("WORKER_CONF_DIR", "conf")
    start_emulator: bool = _variable("WORKER_START_EMULATOR", True)
    seed_sample: bool = _variable("WORKER_SEED_SAMPLE", True)
    max_receive_count: int = 3
    # Cellenics v2: its results bucket is named after the AWS account, as the platform names it.
    aws_account_id: str = _variable("AWS_ACCOUNT_ID", "", pattern=r"^(\d{12})?$")
    v2_results_bucket: str = _variable("WORKER_V2_RESULTS_BUCKET", "")
    # The platform's Redis (socket.io notifications) and API (cell set updates); in development
    # and test a Redis is started when none is named.
    redis_url: str | None = _variable("WORKER_REDIS_URL")
    start_redis: bool = _variable("WORKER_START_REDIS", True)
    api_url: str | None = _variable("WORKER_API_URL")
    # ScTypeAnnotate's marker database: an s3:// URL of ScTypeDB_full.xlsx (sc-type's).
    sctype_db: str | None = _variable("WORKER_SCTYPE_DB", None, pattern=r"^s3://[^/]+/.+\.xlsx$")

    @field_validator("source_buckets", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        if isinstance(value, str):
            return tuple(bucket.strip() for bucket in value.split(",") if bucket.strip())
        return value

    @field_validator(
        "aws_endpoint_url",
        "dask_scheduler_address",
        "health_port",
        "redis_url",
        "api_url",
        "sctype_db",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value):
        return None if value == "" else value

    @model_validator(mode="after")
    def _defaults_of_the_environment(self) -> "Settings":
        env = self.cluster_env
        deployed = env in ("staging", "production")
        defaults = {
            "aws_endpoint_url": None if deployed else DEFAULT_ENDPOINT,
            "queue": f"{env}-queue.fifo",
            "dead_letter_queue": f"{env}-queue-dlq.fifo",
            "results_queue": f"{env}-results",
            "results_topic": f"work-results-{env}",
            "results_bucket": f"worker-results-{env}",
            "processed_bucket": f"processed-matrix-{env}",
            "cell_sets_bucket": f"cell-sets-{env}",
            "source_buckets": ("biomage-source-originals", "biomage-source-development")
            if env == "development"
            else (f"biomage-source-{env}",),
        }
        for name, default in defaults.items():
            if not getattr(self, name):
                object.__setattr__(self, name, default)
        if not self.store_root:
            object.__setattr__(self, "store_root", f"s3://{self.processed_bucket}")
        # Deployed, the account must be given; without it the v2 protocol is not served.
        account = self.aws_account_id or ("" if deployed else "000000000000")
        if not self.v2_results_bucket and account:
            object.__setattr__(self, "v2_results_bucket", f"worker-results-{env}-{account}")
        if deployed:
            object.__setattr__(self, "start_emulator", False)
            object.__setattr__(self, "start_redis", False)
            object.__setattr__(self, "seed_sample", False)
        elif self.redis_url is None:
            object.__setattr__(self, "redis_url", DEFAULT_REDIS)
        return self

    @property
    def aws(self) -> AwsSettings:
        return AwsSettings(
            region=self.aws_region,
            endpoint_url=self.aws_endpoint_url,
            emulator_credentials=not self.is_deployed and self.aws_access_key_id is None,
        )

    @property
    def is_deployed(self) -> bool:
        return self.cluster_env in ("staging", "production")

    @property
    def shows_tracebacks(self) -> bool:
        return self.cluster_env == "development"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of the process environment, or of `environ` alone when given (tests)."""
    if environ is None:
        return Settings()
    # model_validate reads only the mapping given, never the process environment.
    return Settings.model_validate(dict(environ))
