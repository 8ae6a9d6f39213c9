"""The worker on a real Dask cluster: a `dask scheduler` and `dask worker` processes on loopback.

The Dask processes get an environment without the worker's settings (no AWS_*, WORKER_*,
CLUSTER_ENV) and a working directory of their own, so these tests also show that tasks reach
S3 through their arguments (TaskContext) and never through what the worker process shares.
"""

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from distributed import Client, get_task_stream
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    SOURCE_BUCKET,
    TENX_DATA,
    RunningWorker,
    free_port,
    make_request,
    make_settings,
    result_body,
    upload_folder,
)
from tests.dask_processes import DASK, dask_environment, wait_until
from tests.tasks.helpers import scanpy_log_normalised
from worker.datasets.synthetic import SyntheticDataset, write_h5ad
from worker.local.client import ApiClient
from worker.service.cluster import connect
from worker.settings import Settings
from worker.store.locations import filesystem, list_versions, read_manifest, zarr_store

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(600)]

SUBTASKS = ("_scan_row_block", "_assemble_segment", "_project_row_block")


@contextmanager
def dask_cluster(directory: Path, n_workers: int, **environment: str) -> Iterator[str]:
    """A `dask scheduler` and `n_workers` `dask worker` processes; yields the scheduler address
    once every worker has joined, and terminates them all on exit."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    commands = [["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]] + [
        ["worker", address, "--host", "127.0.0.1", "--nworkers", "1", "--nthreads", "2",
         "--memory-limit", "2GiB", "--no-dashboard", "--local-directory", str(directory)]
        for _ in range(n_workers)
    ]  # fmt: skip
    processes = []
    try:
        for index, command in enumerate(commands):
            with open(directory / f"dask-{index}.log", "w") as log:
                processes.append(
                    subprocess.Popen(
                        [str(DASK), *command],
                        cwd=directory,
                        env=dask_environment(**environment),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        with Client(address, timeout="30s") as client:
            if n_workers:
                client.wait_for_workers(n_workers, timeout=60)
        yield address
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def worker_environment(settings: Settings, scheduler_address: str, **extra: str) -> dict[str, str]:
    """The environment `python -m worker` reads `settings` from, on that scheduler."""
    return dask_environment(
        CLUSTER_ENV=settings.cluster_env,
        AWS_ENDPOINT_URL=settings.aws.endpoint_url,
        WORKER_QUEUE=settings.queue,
        WORKER_DEAD_LETTER_QUEUE=settings.dead_letter_queue,
        WORKER_RESULTS_QUEUE=settings.results_queue,
        WORKER_RESULTS_TOPIC=settings.results_topic,
        WORKER_SOURCE_BUCKETS=",".join(settings.source_buckets),
        WORKER_VISIBILITY_TIMEOUT=str(settings.visibility_timeout_s),
        WORKER_SEED_SAMPLE="false",
        WORKER_POLL_WAIT="1",
        DASK_SCHEDULER_ADDRESS=scheduler_address,
        **extra,
    )


class OutputLines:
    """The lines a subprocess writes, read by a thread, waited for with a deadline."""

    def __init__(self, process: subprocess.Popen):
        self._lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self._lines.put(line)

    def wait_for(self, *fragments: str, timeout_s: float = 120) -> str:
        """The next line holding every fragment."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {fragments}:\n{''.join(self.seen)}") from None
            self.seen.append(line)
            if all(fragment in line for fragment in fragments):
                return line


@pytest.fixture(scope="module")
def scheduler_address(tmp_path_factory) -> Iterator[str]:
    # The Dask workers log the worker's own INFO lines (the stages of a prepare) to dask-*.log.
    directory = tmp_path_factory.mktemp("dask")
    with dask_cluster(directory, n_workers=2, DASK_LOGGING__WORKER="info") as address:
        yield address


@pytest.fixture(scope="module")
def client(scheduler_address) -> Iterator[Client]:
    """The worker's client of the cluster, through the version check."""
    client = connect(scheduler_address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def cluster_settings(emulator) -> Settings:
    return make_settings(emulator.url)


@pytest.fixture(scope="module")
def cluster_worker(cluster_settings, client) -> Iterator[RunningWorker]:
    running = RunningWorker(cluster_settings, client)
    yield running
    running.stop()


def prepare(worker: RunningWorker, experiment_id: str, source: str) -> dict:
    response = worker.ask(
        {"name": "PrepareExperiment", "sourceBucket": SOURCE_BUCKET, "sourceMatrixPath": source},
        experiment_id=experiment_id,
        timeout_s=240,
    )
    body = result_body(response, worker.settings)
    assert response["response"]["error"] is False, body
    return body


@pytest.fixture(scope="module")
def prepared_on_cluster(cluster_settings, cluster_worker, client) -> tuple[dict, list[dict]]:
    """shared/data/10x/v3_mtx_gz prepared on the cluster, and the scheduler's task stream of it."""
    upload_folder(cluster_settings, TENX_DATA / "v3_mtx_gz", SOURCE_BUCKET, "distributed/v3")
    with get_task_stream(client) as stream:
        result = prepare(cluster_worker, "distributed-v3", "distributed/v3")
    return result, stream.data


def test_prepare_and_queries_run_on_the_clusters_workers(
    prepared_on_cluster, cluster_settings, cluster_worker, client
):
    result, prepare_stream = prepared_on_cluster
    assert (result["cells"], result["genes"]) == (1107, 507)
    with get_task_stream(client) as queries:
        genes = result_body(
            cluster_worker.ask({"name": "ListGenes", "limit": 1}, "distributed-v3"),
            cluster_settings,
        )
        [gene] = [row["gene_names"] for row in genes["rows"]]
        expression = cluster_worker.ask(
            {"name": "GeneExpression", "genes": [gene]}, experiment_id="distributed-v3"
        )
    assert genes["total"] == 507
    [values] = result_body(expression, cluster_settings)["data"]
    reference = scanpy_log_normalised(result["store"], cluster_settings)
    np.testing.assert_allclose(
        values["expression"], reference[:, gene].X.toarray()[:, 0], rtol=1e-5, atol=1e-6
    )

    # The scheduler saw every task run on a worker of its own: the two Dask worker processes,
    # none of which is this process.
    pids = client.run(os.getpid)
    assert len(pids) == 2 and os.getpid() not in pids.values()
    prepare_tasks = {task["key"].split("-")[0] for task in prepare_stream}
    assert {"PrepareExperiment", *SUBTASKS} <= prepare_tasks
    assert {task["worker"] for task in prepare_stream + queries.data} <= pids.keys()
    assert {task["key"].split("-")[0] for task in queries.data} == {"ListGenes", "GeneExpression"}


@pytest.fixture(scope="module")
def synthetic_source(cluster_settings) -> tuple[str, SyntheticDataset]:
    """A generated source big enough that its PrepareExperiment takes several seconds."""
    dataset = SyntheticDataset(n_cells=5000, n_genes=1000, seed=5, counts_per_cell=1500)
    fs, _ = filesystem("s3://", cluster_settings.aws)
    write_h5ad(fs, f"{SOURCE_BUCKET}/distributed/5k.h5ad", dataset)
    return "distributed/5k.h5ad", dataset


def test_a_dask_worker_killed_mid_prepare_is_survived(
    synthetic_source, cluster_settings, cluster_worker, client
):
    source, dataset = synthetic_source
    request = make_request(
        {"name": "PrepareExperiment", "sourceBucket": SOURCE_BUCKET, "sourceMatrixPath": source},
        experiment_id="distributed-killed",
    )
    cluster_worker.send(request)

    def orchestrating_worker_once_subtasks_run() -> str | None:
        processing = client.processing()
        keys = [key for keys in processing.values() for key in keys]
        if not any(key.startswith(SUBTASKS) for key in keys):
            return None
        prefix = f"PrepareExperiment-{request['uuid']}"
        return next(
            address
            for address, keys in processing.items()
            if any(key.startswith(prefix) for key in keys)
        )

    # The worker running PrepareExperiment itself, killed while its subtasks compute: the
    # hardest loss, since the whole task must start again elsewhere.
    doomed = wait_until(orchestrating_worker_once_subtasks_run, 120, "PrepareExperiment subtasks")
    os.kill(client.run(os.getpid, workers=[doomed])[doomed], signal.SIGKILL)

    response = cluster_worker.response(request["uuid"], timeout_s=240)
    if response["response"]["error"]:
        # Also allowed: an error response, then the request sent again succeeds.
        prepare(cluster_worker, "distributed-killed", source)
    else:
        assert result_body(response, cluster_settings)["cells"] == dataset.n_cells

    # Complete and correct, and the version the killed attempt began is gone.
    root, aws = cluster_settings.store_root, cluster_settings.aws
    manifest = read_manifest(root, "distributed-killed", aws)
    assert list_versions(root, "distributed-killed", aws) == [manifest["version"]]
    url = f"{root}/distributed-killed/{manifest['version']}"
    store = ad.read_zarr(zarr_store(url, aws, read_only=True))
    counts = sp.vstack(list(dataset.row_blocks())).tocsr()
    assert (counts != store.X).nnz == 0
    assert (counts != store.layers["counts_by_gene"].tocsr()).nnz == 0
    assert store.obsm["X_pca"].shape[0] == dataset.n_cells

    # The worker process goes on serving, and the nanny has replaced the killed Dask worker.
    genes = cluster_worker.ask({"name": "ListGenes", "limit": 1}, "distributed-killed")
    assert result_body(genes, cluster_settings)["total"] == dataset.n_genes
    client.wait_for_workers(2, timeout=60)
    assert doomed not in client.scheduler_info()["workers"]


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_python_m_worker_on_the_cluster_serves_health_and_metrics(
    prepared_on_cluster, scheduler_address, emulator
):
    settings = make_settings(emulator.url)
    health_port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "worker"],
        env=worker_environment(settings, scheduler_address, WORKER_HEALTH_PORT=str(health_port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = OutputLines(process)
    try:
        output.wait_for(f"connected to the Dask scheduler at {scheduler_address}")
        output.wait_for(f"health and metrics on port {health_port}")
        output.wait_for("listening on")
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=5) as probe:
            assert (probe.status, probe.read()) == (200, b"ok")
        served = ("worker_requests_total", frozenset({("task", "ListGenes"), ("outcome", "ok")}))
        assert served not in scrape(health_port)

        api = ApiClient(settings)
        request = make_request({"name": "ListGenes", "limit": 3}, "distributed-v3")
        api.send(request)
        # The loop logs a request's line after counting it.
        output.wait_for('"task":"ListGenes"', '"outcome":"ok"')
        assert scrape(health_port)[served] == 1
        response = api.response(request["uuid"], timeout_s=30)
        assert (
            api.result(response) == {"rows": [], "total": 0}
            or len(api.result(response)["rows"]) == 3
        )
    finally:
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=60)
    assert status == 0, "".join(output.seen)
