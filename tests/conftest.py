"""Shared fixtures: a real moto server on loopback, a real Dask LocalCluster, a running worker."""

import os
import socket
import threading
import uuid
from pathlib import Path

import dask
import pytest
import yaml
from distributed import Client, LocalCluster

from worker.local.client import ApiClient, make_request
from worker.local.emulator import Emulator, provision
from worker.local.redis_server import RedisServer
from worker.service.cluster import DaskConnection
from worker.service.health import HealthServer
from worker.service.loop import QueueWorker
from worker.settings import Settings, load_settings
from worker.transport.aws import aws_client
from worker.transport.queue import WorkQueue
from worker.transport.seed import SeedProtocol

# Real Cell Ranger outputs, from scanpy's test data (see its README).
TENX_DATA = Path(__file__).resolve().parent / "data" / "10x"
CONF = Path(__file__).resolve().parents[1] / "conf" / "dask.yaml"


# Run in pytest-xdist processes (`pytest -n 3 --dist loadgroup`, see the README's Tests), a
# file's tests go to one process: what they start or compile once (a cluster, numba's code) is
# not started or compiled again by another. The tests on the session's prepared experiments
# share one process too, so that those experiments are prepared once.
SHARED_GROUP = "prepared-experiments"


# First: pytest-xdist reads the groups in its own hook of the same name.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        shared = "session_worker" in item.fixturenames
        in_file = item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(SHARED_GROUP if shared else in_file))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def emulator():
    emulator = Emulator(free_port()).ready()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer(free_port()).ready()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dask_client():
    # One Dask worker process, as `make run` starts: a second would import scanpy and compile
    # numba's neighbour search again. Four threads: tests hold up to four tasks at once.
    # The Dask worker's memory allocator as conf/dask.yaml sets it for deployed ones.
    environ = yaml.safe_load(CONF.read_text())["distributed"]["nanny"]["pre-spawn-environ"]
    with dask.config.set(
        {f"distributed.nanny.pre-spawn-environ.{name}": value for name, value in environ.items()}
    ):
        cluster = LocalCluster(
            n_workers=1,
            threads_per_worker=4,
            processes=True,
            dashboard_address=None,
            memory_limit="4GiB",
        )
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


def embedded_default_environment() -> dict[str, str]:
    """The environment of `python -m worker` on its embedded defaults, on a free port."""
    inherited = {
        key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "WORKER_"))
    }
    return inherited | {
        "CLUSTER_ENV": "development",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "WORKER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "WORKER_POLL_WAIT": "1",
        # The test's own LocalCluster may hold the usual dashboard port.
        "DASK_WORKER__LOCAL_CLUSTER__DASHBOARD_ADDRESS": ":0",
    }


def make_settings(endpoint_url: str, **environ: str) -> Settings:
    """Settings with a queue, topic and results queue of their own; buckets shared."""
    suffix = uuid.uuid4().hex[:10]
    env = {
        "CLUSTER_ENV": "test",
        "AWS_ENDPOINT_URL": endpoint_url,
        "WORKER_QUEUE": f"work-{suffix}.fifo",
        "WORKER_DEAD_LETTER_QUEUE": f"work-{suffix}-dlq.fifo",
        "WORKER_RESULTS_QUEUE": f"results-{suffix}",
        "WORKER_RESULTS_TOPIC": f"work-results-{suffix}",
        "WORKER_SOURCE_BUCKETS": "biomage-source-test,second-source-test",
        "WORKER_POLL_WAIT": "1",
        "WORKER_VISIBILITY_TIMEOUT": "30",
        "WORKER_SHUTDOWN_GRACE": "5",
    }
    settings = load_settings(env | environ)
    provision(settings)
    return settings


@pytest.fixture
def settings(emulator) -> Settings:
    return make_settings(emulator.url)


class RunningWorker:
    """A QueueWorker serving in a thread, and the API's client to talk to it."""

    def __init__(self, settings: Settings, client: Client, protocols=None):
        self.settings = settings
        self.sqs = aws_client("sqs", settings.aws)
        self.queue = WorkQueue(settings)
        self.health = HealthServer(host="127.0.0.1", port=0, stale_after_s=30)
        self.dask = DaskConnection(client, check_builds=False)
        self.worker = QueueWorker(
            settings, self.dask, self.queue, protocols or [SeedProtocol(settings)], self.health
        )
        self.api = ApiClient(settings)
        self._thread = threading.Thread(target=self.worker.run, daemon=True)
        self._thread.start()

    def send(self, request: dict | str) -> None:
        self.api.send(request)

    def response(self, request_uuid: str, timeout_s: float = 120) -> dict:
        return self.api.response(request_uuid, timeout_s)

    def ask(self, body: dict, experiment_id: str = "e1", timeout_s: float = 120) -> dict:
        return self.api.ask(body, experiment_id, timeout_s)

    def stop(self) -> None:
        self.worker.stop()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive()
        self.dask.close()


@pytest.fixture
def running_worker(settings, dask_client):
    running = RunningWorker(settings, dask_client)
    yield running
    running.stop()


def result_body(response: dict, settings: Settings):
    """The first result's body as JSON, fetched from the results bucket when offloaded."""
    return ApiClient(settings).result(response)


SOURCE_BUCKET = "biomage-source-test"


def upload_folder(settings: Settings, local: Path, bucket: str, prefix: str) -> None:
    s3 = aws_client("s3", settings.aws)
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for path in files:
        key = f"{prefix}/{path.name}" if local.is_file() else f"{prefix}/{path.relative_to(local)}"
        s3.upload_file(str(path), bucket, key)


@pytest.fixture(scope="session")
def session_settings(emulator) -> Settings:
    """Settings of the session's shared worker; its prepared experiments are shared too."""
    return make_settings(emulator.url)


@pytest.fixture(scope="session")
def session_worker(session_settings, dask_client):
    running = RunningWorker(session_settings, dask_client)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def prepared_10x(session_settings, session_worker) -> dict[str, dict]:
    """Each real Cell Ranger file of tests/data/10x prepared once: name -> PrepareExperiment
    result."""
    sources = {
        "v2_mtx": "v2_mtx",
        "v3_mtx_gz": "v3_mtx_gz",
        "v2_h5": "v2_filtered_gene_bc_matrices.h5",
        "v3_h5": "v3_filtered_feature_bc_matrix.h5",
    }
    requests = {}
    for name, source in sources.items():
        upload_folder(session_settings, TENX_DATA / source, SOURCE_BUCKET, f"shared/{name}")
        key = f"shared/{name}" + (f"/{source}" if source.endswith(".h5") else "")
        request = make_request(
            {"name": "PrepareExperiment", "sourceBucket": SOURCE_BUCKET, "sourceMatrixPath": key},
            experiment_id=f"shared-{name.replace('_', '-')}",
        )
        session_worker.send(request)
        requests[name] = request
    prepared = {}
    for name, request in requests.items():
        response = session_worker.response(request["uuid"], timeout_s=240)
        body = result_body(response, session_settings)
        assert response["response"]["error"] is False, body
        prepared[name] = body
    return prepared


SYNTHETIC_EXPERIMENT = "synthetic-5k"


@pytest.fixture(scope="session")
def synthetic_dataset():
    from worker.datasets.synthetic import SyntheticDataset

    # More cells than scanpy's 4096-cell switch to approximate neighbours.
    return SyntheticDataset(n_cells=5000, n_genes=1000, seed=1, counts_per_cell=1500)


@pytest.fixture(scope="session")
def prepared_synthetic(session_settings, session_worker, synthetic_dataset) -> dict:
    """The generated dataset written as h5ad and prepared once (experiment `synthetic-5k`)."""
    from worker.datasets.synthetic import write_h5ad
    from worker.store.locations import filesystem

    fs, _ = filesystem("s3://", session_settings.aws)
    write_h5ad(fs, f"{SOURCE_BUCKET}/synthetic/5k.h5ad", synthetic_dataset)
    response = session_worker.ask(
        {
            "name": "PrepareExperiment",
            "sourceBucket": SOURCE_BUCKET,
            "sourceMatrixPath": "synthetic/5k.h5ad",
        },
        experiment_id=SYNTHETIC_EXPERIMENT,
        timeout_s=300,
    )
    body = result_body(response, session_settings)
    assert response["response"]["error"] is False, body
    return body
