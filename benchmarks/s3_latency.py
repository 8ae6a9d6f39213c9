"""`--store s3`: the store on the embedded emulator's S3 behind `AwsProxy`, which delays every
S3 request (SQS and SNS untouched) and counts them; each measure runs at 0 ms and at the added
latency, and reports the S3 requests it made and the sequential round trips it paid."""

from collections.abc import Callable
from dataclasses import dataclass, field

from boto3.s3.transfer import TransferConfig

from worker.local.aws_proxy import AwsProxy, Totals
from worker.settings import AwsSettings
from worker.transport.aws import aws_client

# As a real region answers: 10-30 ms before the first byte.
ADDED_LATENCY_S = 0.025
SOURCE_KEY_PREFIX = "benchmark"
MIB = 1 << 20


@dataclass
class S3Latency:
    """The proxy in front of the emulator, and the latencies every measure runs at."""

    proxy: AwsProxy
    latencies_s: tuple[float, ...] = (0.0, ADDED_LATENCY_S)
    _counts: list[Totals] = field(default_factory=list)

    @classmethod
    def start(cls, emulator_url: str) -> "S3Latency":
        return cls(AwsProxy(emulator_url))

    @property
    def url(self) -> str:
        return self.proxy.url

    def stop(self) -> None:
        self.proxy.stop()

    def measured(self, measure: Callable[[Callable[[], dict]], dict], run_once) -> dict:
        """`measure(run)` at each latency, `run` being `run_once` with the S3 requests of each
        call counted; the measure at 0 ms, with `s3`: each latency's timings and requests per
        run (runs after a warm-up only)."""
        by_latency = {}
        for latency_s in self.latencies_s:
            self.proxy.delay_s = {"s3": latency_s}
            counts: list[Totals] = []

            def counted(counts: list[Totals] = counts) -> dict:
                before = self.proxy.totals("s3")
                timings = run_once()
                counts.append(self.proxy.totals("s3") - before)
                return timings

            result = measure(counted)
            # A repeated measure's first run warms up and is not counted.
            runs = len(counts) - 1 or 1
            counted_runs = counts[-runs:]
            by_latency[latency_label(latency_s)] = result | {
                "s3_requests_per_run": sum(c.requests for c in counted_runs) / runs,
                "s3_mib_sent_per_run": sum(c.sent_bytes for c in counted_runs) / runs / MIB,
                "s3_mib_received_per_run": sum(c.received_bytes for c in counted_runs) / runs / MIB,
            }
        self.proxy.delay_s = {}
        return by_latency[latency_label(0.0)] | {
            "s3": {"added_latency_s": max(self.latencies_s), "by_latency": by_latency}
        }


def latency_label(latency_s: float) -> str:
    return f"{latency_s * 1000:g} ms"


def upload_source(aws: AwsSettings, bucket: str, path: str) -> str:
    """The tier's h5ad uploaded to the source bucket (straight to the emulator: `aws` does not
    go through the proxy); returns its key."""
    key = f"{SOURCE_KEY_PREFIX}/{path.rsplit('/', 1)[-1]}"
    aws_client("s3", aws).upload_file(
        path, bucket, key, Config=TransferConfig(multipart_chunksize=64 * MIB)
    )
    return key
