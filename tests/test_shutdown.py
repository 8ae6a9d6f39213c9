"""`python -m worker` on its embedded defaults (its own AWS emulator, Redis and LocalCluster),
stopped by SIGTERM or SIGINT sent to it alone or to its whole process group, as a terminal's
Ctrl-C or a supervisor does: idle or with a request in flight, it exits 0, answers or gives back
the request, stops the cluster and then Redis and the emulator, and leaves no process behind."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import embedded_default_environment, make_request
from tests.dask_processes import wait_until
from worker.jsonio import loads
from worker.local.client import ApiClient
from worker.settings import load_settings
from worker.transport.aws import aws_client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

LONG_POLL_S = 20


class EmbeddedWorker:
    """`python -m worker` leading a process group of its own, as a shell starts a job."""

    def __init__(self, tmp_path: Path, **environment: str):
        self.environment = embedded_default_environment() | {
            "WORKER_SEED_SAMPLE": "false",
            "WORKER_POLL_WAIT": str(LONG_POLL_S),
            "DASK_WORKER__LOCAL_CLUSTER__THREADS_PER_WORKER": "1",
            **environment,
        }
        self.log_path = tmp_path / "worker.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker"],
                env=self.environment,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.children: list[psutil.Process] = []

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_until_serving(self) -> None:
        wait_until(
            lambda: "INFO worker.service.loop: serving" in self.log() or self.process.poll(),
            120,
            "the worker serving",
        )
        assert self.process.poll() is None, self.log()
        self.children = psutil.Process(self.process.pid).children(recursive=True)

    def child(self, *fragments: str) -> psutil.Process:
        [found] = [
            child
            for child in self.children
            if all(fragment in " ".join(child.cmdline()) for fragment in fragments)
        ]
        return found

    def signal(self, stop_signal: int, *, to_group: bool) -> None:
        if to_group:
            os.killpg(self.process.pid, stop_signal)
        else:
            self.process.send_signal(stop_signal)

    def dask_tasks_processing(self) -> int:
        """The tasks its LocalCluster's scheduler has given to a Dask worker (its dashboard's
        counts, read over HTTP: the scheduler lives in the worker's process)."""
        [dashboard] = re.findall(r"dashboard: (http://\S+)/status", self.log())
        with urllib.request.urlopen(f"{dashboard}/json/counts.json", timeout=5) as response:
            return loads(response.read())["processing"]

    def outcomes(self) -> list[dict]:
        lines = [line for line in self.log().splitlines() if "request {" in line]
        return [loads(line[line.index("{") :]) for line in lines]

    def clean_up(self) -> None:
        for child in self.children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.send_signal(signal.SIGCONT)
                child.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture
def started(tmp_path):
    """Starts an EmbeddedWorker with the environment given; kills whatever is left."""
    workers = []

    def start(**environment: str) -> EmbeddedWorker:
        worker = EmbeddedWorker(tmp_path, **environment)
        workers.append(worker)
        worker.wait_until_serving()
        return worker

    yield start
    for worker in workers:
        worker.clean_up()


def assert_stopped_in_order(worker: EmbeddedWorker) -> None:
    """Exit 0, the cluster stopped before Redis and the emulator, and no process of its left."""
    output = worker.log()
    assert worker.process.returncode == 0, output
    stops = [
        "stopped the Dask LocalCluster",
        "stopped the embedded Redis server",
        "stopped the embedded AWS emulator",
        "worker stopped",
    ]
    lines = [line for line in output.splitlines() if line.endswith(tuple(stops))]
    assert [stop for line in lines for stop in stops if line.endswith(stop)] == stops, output
    assert "Connection refused" not in output
    wait_until(
        lambda: not [child for child in worker.children if child.is_running()],
        30,
        "every process the worker started to stop",
    )


def assert_children_out_of_the_group(worker: EmbeddedWorker) -> None:
    """The emulator, Redis and the Dask worker process are out of reach of the worker's process
    group (multiprocessing's resource tracker ignores SIGINT and SIGTERM by itself)."""
    session = os.getsid(worker.process.pid)
    for child in (
        worker.child("-m", "worker.local.emulator"),
        worker.child("-m", "worker.local.redis_server"),
        worker.child("multiprocessing.spawn"),
    ):
        assert os.getsid(child.pid) == child.pid != session
    assert os.getsid(worker.child("redis-server").pid) != session


@pytest.mark.parametrize(
    ("stop_signal", "to_group"),
    [(signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["SIGTERM to the worker", "SIGINT to its process group"],
)
def test_an_idle_worker_abandons_its_long_poll_and_stops_in_order(started, stop_signal, to_group):
    worker = started()
    assert_children_out_of_the_group(worker)

    worker.signal(stop_signal, to_group=to_group)
    # Well before the long poll in progress would end by itself.
    worker.process.wait(timeout=LONG_POLL_S - 5)
    assert_stopped_in_order(worker)


@pytest.mark.parametrize(
    ("stop_signal", "to_group", "grace", "finishes"),
    [(signal.SIGTERM, True, "60", True), (signal.SIGINT, False, "1", False)],
    ids=["SIGTERM to the group, finished in the grace", "SIGINT to the worker, released"],
)
def test_a_busy_worker_finishes_or_releases_its_request_then_stops_in_order(
    started, stop_signal, to_group, grace, finishes
):
    worker = started(WORKER_SHUTDOWN_GRACE=grace)
    settings = load_settings(worker.environment)
    api = ApiClient(settings)
    sqs = aws_client("sqs", settings.aws)

    def queue_counts() -> tuple[str, str]:
        attributes = sqs.get_queue_attributes(
            QueueUrl=api.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return (
            attributes["ApproximateNumberOfMessages"],
            attributes["ApproximateNumberOfMessagesNotVisible"],
        )

    # The Dask worker process stopped: the request stays in flight until it is continued.
    dask_worker = worker.child("multiprocessing.spawn")
    dask_worker.suspend()
    request = make_request({"name": "ListGenes"}, experiment_id="never-prepared")
    api.send(request)
    wait_until(lambda: queue_counts() == ("0", "1"), 60, "the request in flight")
    # Received is not yet dispatched: a message received as the stop comes is released at once.
    wait_until(lambda: worker.dask_tasks_processing() == 1, 60, "the request on the Dask worker")

    worker.signal(stop_signal, to_group=to_group)
    if finishes:
        dask_worker.resume()
        wait_until(lambda: "request {" in worker.log(), 60, "the request's outcome")
        [outcome] = worker.outcomes()
        assert (outcome["outcome"], outcome["code"]) == ("error", "ExperimentNotFound")
    else:
        wait_until(lambda: "request {" in worker.log(), 60, "the request's outcome")
        outcome, *late = worker.outcomes()
        assert (outcome["outcome"], outcome["reason"]) == ("released", "shutdown")
        # Visible again at once, for another worker; the emulator lives until the cluster,
        # held by the stopped Dask worker, is stopped. The long poll the stop abandoned may
        # receive it meanwhile, as SQS would give it: it is released again at once.
        wait_until(lambda: queue_counts() == ("1", "0"), 10, "the request visible again")
        assert api.published() == []
        dask_worker.resume()
        worker.process.wait(timeout=90)
        late = worker.outcomes()[1:]
        assert all(
            (record["messageId"], record["outcome"], record["reason"])
            == (outcome["messageId"], "released", "received as the worker stopped")
            for record in late
        ), late
    assert outcome["id"] == request["uuid"]
    worker.process.wait(timeout=90)
    assert_stopped_in_order(worker)
