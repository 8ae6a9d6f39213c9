"""Our side: PrepareExperiment and the queries through `run_task` on the worker's LocalCluster,
GeneExpression end to end through the queue, and the memory of every process.

The store root is a local folder, so the emulator is not measured; the embedded emulator still
holds the queues, the topic and the cell sets. PrepareExperiment's task reads its source from
S3 only, so here the same build (`build_store` on a Dask worker, then `publish_version`) reads
the local h5ad instead, and the task's cell-set writes are left out.
"""

import os
import shutil
import socket
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from distributed import Client, worker_client
from fsspec.implementations.local import LocalFileSystem

from benchmarks.measure import RssSampler, peak_rss_mib, repeat, rss_mib, summary
from benchmarks.tiers import LIST_GENES_FILTER, LIST_GENES_LIMIT, ONE_GENE, Tier
from worker.cluster import load_conf, start_local_cluster
from worker.emulator import Emulator, provision
from worker.health import HealthServer
from worker.jsonio import dumps, loads
from worker.loop import QueueWorker
from worker.settings import Settings, load_settings
from worker.store.build import BuildOptions, build_store
from worker.store.cell_sets import cluster_hierarchy, write_cell_sets
from worker.store.experiment import experiment_url, new_version_name, publish_version
from worker.store.sources import open_source
from worker.tasks import run_task
from worker.tasks.base import TaskContext
from worker.transport.aws import aws_client
from worker.transport.queue import WorkQueue
from worker.transport.results import ResultPublisher

EXPERIMENT = "benchmark"
END_TO_END = "GeneExpression, 1 gene, send to SNS"
RESPONSE_TIMEOUT_S = 600


def run(tier: Tier) -> dict:
    shutil.rmtree(tier.folder / "store" / EXPERIMENT, ignore_errors=True)
    with ExitStack() as stack:
        emulator = Emulator(_free_port())
        stack.callback(emulator.stop)
        settings = load_settings(
            {
                "CLUSTER_ENV": "test",
                "AWS_ENDPOINT_URL": emulator.url,
                "WORKER_STORE_ROOT": str(tier.folder / "store"),
                "WORKER_POLL_WAIT": "1",
            }
        )
        load_conf(Path(settings.conf_dir))
        provision(settings)
        cluster = start_local_cluster(dashboard_address=":0")
        stack.callback(cluster.close)
        client = Client(cluster)
        stack.callback(client.close)
        idle_rss_mib = rss_mib()
        worker_pids = client.run(os.getpid)
        sampler = stack.enter_context(RssSampler([os.getpid(), *worker_pids.values()]))
        context = TaskContext.for_experiment(settings, EXPERIMENT)

        measures = {"PrepareExperiment": _prepare(client, context, tier, sampler)}
        # The generator's cell types as cell sets `cell_type-0`, `cell_type-1`, ...
        cell_types = cluster_hierarchy(
            "cell_type",
            "Cell types",
            tier.dataset.cluster_labels,
            child_names=tier.dataset.cluster_names,
        )
        write_cell_sets(settings.cell_sets_bucket, EXPERIMENT, settings.aws, [cell_types])
        for name, body, repeats in _queries(tier):
            measures[name] = repeat(
                lambda body=body: _run_task(client, context, body), repeats, sampler
            )
        measures[END_TO_END] = _end_to_end(
            settings, client, {"name": "GeneExpression", "genes": [ONE_GENE]}, tier, sampler
        )
        peaks = {"worker process": peak_rss_mib()} | {
            f"Dask worker {worker_pids[address]}": peak
            for address, peak in client.run(peak_rss_mib).items()
        }
    return {
        "measures": measures,
        "worker_process_idle_rss_mib": idle_rss_mib,
        "peak_rss_mib_by_process": peaks,
    }


def _queries(tier: Tier) -> list[tuple[str, dict, int]]:
    light, heavy = tier.light_repeats, tier.heavy_repeats
    return [
        (
            "ListGenes",
            {
                "name": "ListGenes",
                "selectFields": ["gene_names", "dispersions"],
                "orderBy": "dispersions",
                "orderDirection": "desc",
                "offset": 0,
                "limit": LIST_GENES_LIMIT,
                "geneNamesFilter": f"%{LIST_GENES_FILTER}%",
            },
            light,
        ),
        ("GeneExpression, 1 gene", {"name": "GeneExpression", "genes": [ONE_GENE]}, light),
        (
            "GeneExpression, 20 genes",
            {"name": "GeneExpression", "genes": tier.twenty_genes},
            light,
        ),
        ("GetEmbedding pca", {"name": "GetEmbedding", "type": "pca"}, light),
        (
            "DifferentialExpression",
            {
                "name": "DifferentialExpression",
                "cellSet": "cell_type-0",
                "compareWith": "cell_type-1",
            },
            heavy,
        ),
    ]


def prepare_from_file(context: TaskContext, source: str) -> float:
    """PrepareExperiment's build and publish with the source read from a local file; runs on
    a Dask worker as the task does. Returns the seconds it took there."""
    started = time.perf_counter()
    samples = open_source(LocalFileSystem(), source, "h5ad")
    version = new_version_name()
    url = f"{experiment_url(context.store_root, context.experiment_id)}/{version}"
    provenance = {"source": source, "format": "h5ad"}
    with worker_client() as client:
        build_store(url, samples, context.aws, client, BuildOptions(), provenance)
    publish_version(context.store_root, context.experiment_id, version, context.aws, provenance)
    return time.perf_counter() - started


def _prepare(client: Client, context: TaskContext, tier: Tier, sampler: RssSampler) -> dict:
    sampler.take_peak_mib()
    started = time.perf_counter()
    in_task = client.submit(prepare_from_file, context, str(tier.source), pure=False).result()
    round_trip = time.perf_counter() - started
    return {
        "in_task": summary([in_task]),
        "round_trip": summary([round_trip]),
        "peak_rss_mib": sampler.take_peak_mib(),
    }


def timed_run_task(body: dict, context: TaskContext) -> tuple[float, bytes]:
    """`run_task` timed on the Dask worker; an error answer fails the benchmark."""
    started = time.perf_counter()
    code, payload = run_task(body, context, shows_tracebacks=True)
    seconds = time.perf_counter() - started
    if code is not None:
        raise RuntimeError(f"{body['name']} answered {code}: {payload[:2000].decode()}")
    return seconds, payload


def _run_task(client: Client, context: TaskContext, body: dict) -> dict[str, float]:
    started = time.perf_counter()
    in_task, _ = client.submit(timed_run_task, body, context, pure=False).result()
    return {"in_task": in_task, "round_trip": time.perf_counter() - started}


def _end_to_end(
    settings: Settings, client: Client, body: dict, tier: Tier, sampler: RssSampler
) -> dict:
    """Requests sent to the work queue, answered by a QueueWorker, timed until the response
    arrives on the queue subscribed to the results topic."""
    sqs = aws_client("sqs", settings.aws)
    queue = WorkQueue(settings)
    results_url = sqs.get_queue_url(QueueName=settings.results_queue)["QueueUrl"]
    health = HealthServer(host="127.0.0.1", port=0, stale_after_s=30)
    worker = QueueWorker(settings, client, queue, ResultPublisher(settings), health)
    thread = threading.Thread(target=worker.run, name="queue-worker", daemon=True)
    thread.start()

    def ask() -> dict[str, float]:
        request = {
            "uuid": str(uuid.uuid4()),
            "socketId": "benchmark",
            "experimentId": EXPERIMENT,
            "timeout": "2099-12-31 00:00:00",
            "body": body,
        }
        started = time.perf_counter()
        sqs.send_message(
            QueueUrl=queue.url, MessageBody=dumps(request).decode(), MessageGroupId=request["uuid"]
        )
        while time.perf_counter() - started < RESPONSE_TIMEOUT_S:
            reply = sqs.receive_message(QueueUrl=results_url, WaitTimeSeconds=1)
            for message in reply.get("Messages", []):
                seconds = time.perf_counter() - started
                sqs.delete_message(QueueUrl=results_url, ReceiptHandle=message["ReceiptHandle"])
                response = loads(loads(message["Body"])["Message"])
                if response["request"]["uuid"] != request["uuid"]:
                    continue
                if response["response"]["error"]:
                    raise RuntimeError(f"{body['name']} answered an error: {response}")
                return {"send_to_sns": seconds}
        raise TimeoutError(f"no response to {body['name']} in {RESPONSE_TIMEOUT_S} s")

    try:
        return repeat(ask, tier.light_repeats, sampler)
    finally:
        worker.stop()
        thread.join()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
