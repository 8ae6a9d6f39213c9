"""Our side: PrepareExperiment and the queries through `run_task` on the worker's LocalCluster,
GeneExpression end to end through the queue, and the memory of every process.

With `store="local"` the store root is a local folder, so the emulator is not measured; the
embedded emulator still holds the queues, the topic and the cell sets. PrepareExperiment's task
reads its source from S3 only, so there the same version's life (`store/prepare.prepare_version`
on a Dask worker) reads the local h5ad instead, and the task's cell-set writes are left out.
With `store="s3"` the store and the source are on the emulator's S3 behind a proxy that adds
latency (`benchmarks.s3_latency`), and PrepareExperiment is the task itself.
"""

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import dask
from distributed import Client
from fsspec.implementations.local import LocalFileSystem

from benchmarks.measure import (
    RssSampler,
    child_peak_rss_mib,
    peak_rss_mib,
    repeat,
    rss_mib,
    summary,
)
from benchmarks.s3_latency import S3Latency, upload_source
from benchmarks.tiers import EXPERIMENT, LIST_GENES_FILTER, LIST_GENES_LIMIT, ONE_GENE, Tier
from worker.local.client import ApiClient, make_request
from worker.local.emulator import Emulator, provision
from worker.service.cluster import load_conf, start_local_cluster
from worker.service.dask_worker import is_warm
from worker.settings import Settings, load_settings
from worker.store.build import PROGRESS_TOPIC, STAGES
from worker.store.cell_sets import cluster_hierarchy, update_cell_sets
from worker.store.prepare import prepare_version
from worker.store.sources import open_source
from worker.tasks import TASKS, V2_TASKS
from worker.tasks.base import TaskContext
from worker.tasks.dispatch import Inline, run_task, validated

END_TO_END = "GeneExpression, 1 gene, send to SNS"
MIB = 1 << 20
PROTOCOLS = {"seed": TASKS, "v2": V2_TASKS}
RESPONSE_TIMEOUT_S = 600
WORKER_START_TIMEOUT_S = 120
WARM_UP_TIMEOUT_S = 600


STORES = ("local", "s3")


def run(tier: Tier, store: str = "local") -> dict:
    shutil.rmtree(tier.folder / "store" / EXPERIMENT, ignore_errors=True)
    with ExitStack() as stack:
        emulator = Emulator(_free_port()).ready()
        stack.callback(emulator.stop)
        s3 = None
        environment = {"CLUSTER_ENV": "test", "WORKER_POLL_WAIT": "1"}
        if store == "s3":
            # Every AWS call goes through the proxy; it delays only S3's. The store root is
            # the processed bucket, the default.
            s3 = S3Latency.start(emulator.url)
            stack.callback(s3.stop)
            environment["AWS_ENDPOINT_URL"] = s3.url
        else:
            environment["AWS_ENDPOINT_URL"] = emulator.url
            environment["WORKER_STORE_ROOT"] = str(tier.folder / "store")
        settings = load_settings(environment)
        load_conf(Path(settings.conf_dir))
        # As deployed (the chart's default): Dask workers compile numba when they start.
        dask.config.set({"worker.warm-up-numba": tier.numba_warm})
        provision(settings)
        cluster = start_local_cluster(dashboard_address=":0")
        stack.callback(cluster.close)
        client = Client(cluster)
        stack.callback(client.close)
        _wait_until_warm(client)
        worker_pids = client.run(os.getpid)
        sampler = stack.enter_context(RssSampler([os.getpid(), *worker_pids.values()]))
        context = TaskContext.for_experiment(settings, EXPERIMENT)
        if s3 is None:
            prepare_body = None
        else:
            direct = dataclasses.replace(settings.aws, endpoint_url=emulator.url)
            bucket = settings.source_buckets[0]
            key = upload_source(direct, bucket, str(tier.source))
            prepare_body = {
                "name": "PrepareExperiment",
                "sourceBucket": bucket,
                "sourceMatrixPath": key,
                "format": "h5ad",
            }

        def measured(run_once, measure) -> dict:
            return measure(run_once) if s3 is None else s3.measured(measure, run_once)

        measures = {
            "PrepareExperiment": measured(
                lambda: _prepare_once(client, context, tier, prepare_body),
                lambda run: _prepare_measure(client, run, sampler),
            )
        }
        # The generator's cell types as cell sets `cell_type-0`, `cell_type-1`, ...
        cell_types = cluster_hierarchy(
            "cell_type",
            "Cell types",
            tier.dataset.cluster_labels,
            child_names=tier.dataset.cluster_names,
        )
        update_cell_sets(context.cell_sets_location, lambda current: [cell_types])
        answer_bytes: dict[str, int] = {}
        for name, protocol, body, repeats in _queries(tier):
            measures[name] = measured(
                lambda name=name, protocol=protocol, body=body: _run_task(
                    client, context, protocol, body, answer_bytes, name
                ),
                lambda run, repeats=repeats: repeat(run, repeats, sampler),
            ) | {"answer_mib": answer_bytes[name] / MIB}
        queue_worker = stack.enter_context(
            _queue_worker_process(settings, cluster.scheduler_address, tier.folder)
        )
        idle_rss_mib = rss_mib(queue_worker.pid)
        sampler.watch(queue_worker.pid)
        api = ApiClient(settings)
        measures[END_TO_END] = measured(
            lambda: _end_to_end_once(api, {"name": "GeneExpression", "genes": [ONE_GENE]}),
            lambda run: repeat(run, tier.light_repeats, sampler),
        )
        peaks = {
            "benchmark process (client)": peak_rss_mib(),
            "worker process (python -m worker)": child_peak_rss_mib(queue_worker.pid),
        } | {
            f"Dask worker {worker_pids[address]}": peak
            for address, peak in client.run(peak_rss_mib).items()
        }
    return {
        "store": store,
        "measures": measures,
        "worker_process_idle_rss_mib": idle_rss_mib,
        "peak_rss_mib_by_process": peaks,
    }


def _queries(tier: Tier) -> list[tuple[str, str, dict, int]]:
    """(measure, protocol, body, runs) of each query."""
    light, heavy = tier.light_repeats, tier.heavy_repeats
    return [
        (
            "ListGenes",
            "seed",
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
        ("GeneExpression, 1 gene", "seed", {"name": "GeneExpression", "genes": [ONE_GENE]}, light),
        (
            "GeneExpression, 20 genes",
            "seed",
            {"name": "GeneExpression", "genes": tier.twenty_genes},
            light,
        ),
        # The platform's answer (CELLENICS-V2.md 3.1): a sparse matrix without barcodes; the
        # in-task time includes its JSON, not the v2 protocol's zstd and upload.
        ("GeneExpression v2, 1 gene", "v2", {"name": "GeneExpression", "genes": [ONE_GENE]}, light),
        ("GetEmbedding pca", "seed", {"name": "GetEmbedding", "type": "pca"}, light),
        (
            "DifferentialExpression",
            "seed",
            {
                "name": "DifferentialExpression",
                "cellSet": "cell_type-0",
                "compareWith": "cell_type-1",
            },
            heavy,
        ),
    ]


def prepare_from_file(context: TaskContext, source: str) -> float:
    """PrepareExperiment's version built and published with the source read from a local file;
    runs on a Dask worker as the task does. Returns the seconds it took there."""
    started = time.perf_counter()
    prepare_version(
        root=context.store_root,
        experiment_id=context.experiment_id,
        aws=context.aws,
        samples=open_source(LocalFileSystem(), source, "h5ad"),
        provenance={"source": source, "format": "h5ad"},
    )
    return time.perf_counter() - started


def _wait_until_warm(client: Client) -> None:
    """Wait for the Dask workers' numba warm-up, as a deployed pool has long finished it."""
    deadline = time.monotonic() + WARM_UP_TIMEOUT_S
    while not all(client.run(is_warm).values()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Dask workers did not warm up in {WARM_UP_TIMEOUT_S} s")
        time.sleep(1)


def _prepare_once(
    client: Client, context: TaskContext, tier: Tier, body: dict | None
) -> dict[str, float]:
    """One PrepareExperiment: the task itself when `body` is given (source on S3), else the
    same build from the local h5ad."""
    started = time.perf_counter()
    if body is None:
        in_task = client.submit(prepare_from_file, context, str(tier.source), pure=False)
    else:
        in_task = client.submit(timed_run_task, body, context, pure=False)
    seconds = in_task.result()
    if body is not None:
        seconds = seconds[0]
    return {"in_task": seconds, "round_trip": time.perf_counter() - started}


def _prepare_measure(client: Client, run, sampler: RssSampler) -> dict:
    """One run of the prepare: its timings, the sampled peak, and each stage's seconds from
    the build's progress events."""
    sampler.take_peak_mib()
    started_at = time.time()
    timings = run()
    return {name: summary([seconds]) for name, seconds in timings.items()} | {
        "peak_rss_mib": sampler.take_peak_mib(),
        "stages_s": stage_seconds(client.get_events(PROGRESS_TOPIC), started_at),
    }


def stage_seconds(events: list[tuple[float, dict]], started_at: float) -> dict[str, float]:
    """The seconds of each build stage, from the times its end was reported after
    `started_at` (the first stage counts from then)."""
    ends = {
        event["stage"]: at for at, event in events if at >= started_at and "stagesDone" in event
    }
    seconds, previous = {}, started_at
    for stage in STAGES:
        if stage in ends:
            seconds[stage] = ends[stage] - previous
            previous = ends[stage]
    return seconds


def timed_run_task(body: dict, context: TaskContext, protocol: str = "seed") -> tuple[float, bytes]:
    """`run_task` timed on the Dask worker, with the task of `protocol`; an error answer fails
    the benchmark."""
    task, validated_body = validated(PROTOCOLS[protocol], body)
    started = time.perf_counter()
    result = run_task(task, validated_body, context, Inline(), shows_tracebacks=True)
    seconds = time.perf_counter() - started
    if result.code is not None:
        raise RuntimeError(f"{body['name']} answered {result.code}: {result.body[:2000].decode()}")
    return seconds, result.body


def _run_task(
    client: Client,
    context: TaskContext,
    protocol: str,
    body: dict,
    answer_bytes: dict[str, int],
    name: str,
) -> dict[str, float]:
    started = time.perf_counter()
    in_task, answer = client.submit(timed_run_task, body, context, protocol, pure=False).result()
    answer_bytes[name] = len(answer)
    return {"in_task": in_task, "round_trip": time.perf_counter() - started}


@contextmanager
def _queue_worker_process(
    settings: Settings, scheduler_address: str, folder: Path
) -> Iterator[subprocess.Popen]:
    """`python -m worker` serving the emulator's queue on the benchmark's cluster, as deployed
    (a scheduler to connect to, no emulator or sample of its own); yielded once listening."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "WORKER_", "CLUSTER_ENV", "DASK_"))
    }
    environment = inherited | {
        "CLUSTER_ENV": settings.cluster_env,
        "AWS_ENDPOINT_URL": settings.aws.endpoint_url,
        "WORKER_STORE_ROOT": settings.store_root,
        "WORKER_POLL_WAIT": str(settings.poll_wait_s),
        "WORKER_START_EMULATOR": "false",
        "WORKER_SEED_SAMPLE": "false",
        "DASK_SCHEDULER_ADDRESS": scheduler_address,
    }
    if settings.redis_url is not None:
        # The platform's Redis (Cellenics v2 notifications); started by the worker if absent.
        environment["WORKER_REDIS_URL"] = settings.redis_url
    log_path = folder / "queue-worker.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker"], env=environment, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while "listening on" not in log_path.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"python -m worker did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        # Settled: what it holds between requests, not its start-up garbage.
        time.sleep(2)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _end_to_end_once(api: ApiClient, body: dict) -> dict[str, float]:
    """A request sent to the work queue, answered by `python -m worker`, timed until the
    response arrives on the queue subscribed to the results topic."""
    request = make_request(body, EXPERIMENT)
    started = time.perf_counter()
    api.send(request)
    response = api.response(request["uuid"], RESPONSE_TIMEOUT_S)
    seconds = time.perf_counter() - started
    if response["response"]["error"]:
        raise RuntimeError(f"{body['name']} answered an error: {response}")
    return {"send_to_sns": seconds}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
