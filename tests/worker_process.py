"""`python -m worker` as a child process on the session's emulator, to kill and start again."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from worker.settings import Settings


def worker_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a worker serving `settings`' queue, topic and buckets."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "WORKER_", "CLUSTER_ENV", "DASK_"))
    }
    return inherited | {
        "CLUSTER_ENV": settings.cluster_env,
        "AWS_ENDPOINT_URL": settings.aws.endpoint_url,
        "WORKER_QUEUE": settings.queue,
        "WORKER_DEAD_LETTER_QUEUE": settings.dead_letter_queue,
        "WORKER_RESULTS_QUEUE": settings.results_queue,
        "WORKER_RESULTS_TOPIC": settings.results_topic,
        "WORKER_SOURCE_BUCKETS": ",".join(settings.source_buckets),
        "WORKER_POLL_WAIT": str(settings.poll_wait_s),
        "WORKER_VISIBILITY_TIMEOUT": str(settings.visibility_timeout_s),
        "WORKER_START_EMULATOR": "false",
        "WORKER_SEED_SAMPLE": "false",
        # One small Dask worker: the test session's own LocalCluster shares the machine.
        "DASK_WORKER__LOCAL_CLUSTER__N_WORKERS": "1",
        "DASK_WORKER__LOCAL_CLUSTER__DASHBOARD_ADDRESS": ":0",
        **extra,
    }


class WorkerProcess:
    """A worker in a process group of its own. Its LocalCluster's Dask worker processes have
    sessions of their own; they stop when it dies (their nanny's pipe closes)."""

    def __init__(self, environment: dict[str, str], log_path: Path):
        self.log_path = log_path
        with open(log_path, "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker"],
                env=environment,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_until_listening(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while "listening on" not in self.log():
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the worker and its process group: no shutdown code runs."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=60)
        # Whatever of its process group SIGTERM left behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
