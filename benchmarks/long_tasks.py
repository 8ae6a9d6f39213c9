"""The long-running tasks on a tier's store, our side only (scanpy and TileDB-SOMA have no
counterpart), each run as a person waits for it, in groups (`--long-tasks GROUPS`):

- export: GetNormalizedExpression of a selection of cells (v2; its gzipped CSV streamed into the
  v2 results bucket);
- trajectory: GetTrajectoryAnalysisStartingNodes, then PseudoTime from its first node (v2);
- umap, tsne: GetEmbedding of that type (seed), computed, then asked again and read from the
  store's cache;
- doublets: GetDoubletScore (seed) of every cell, computed, then asked again and read from the
  store's cache;
- v2: GeneExpression of one gene sent as the platform's API sends it, to `python -m worker`,
  timed until the browser's notification that the result is stored (what the seed's "send to
  SNS" times), and until the browser has downloaded and decoded it.

It reads the store the tier's last `ours` run left in its folder (run `make bench` or `make
scaling` on the tier first). The trajectory reads the embedding the API names by ETag; here that
is the store's first two principal components written as a GetEmbedding result, so that the
trajectory's time is its own, not a UMAP's (measured by the umap group).
"""

import dataclasses
import os
import secrets
import time
from pathlib import Path

import dask
import numpy as np
import zstandard
from distributed import Client

from benchmarks.measure import RssSampler, peak_rss_mib, repeat
from benchmarks.ours import _free_port, _queue_worker_process, _wait_until_warm, timed_run_task
from benchmarks.tiers import EXPERIMENT, ONE_GENE, Tier
from worker.jsonio import dumps
from worker.local.client import V2Client
from worker.local.emulator import Emulator, provision
from worker.service.cluster import load_conf, start_local_cluster
from worker.settings import load_settings
from worker.store.cell_sets import cluster_hierarchy, update_cell_sets
from worker.store.experiment import open_experiment
from worker.store.result_file import ResultFile
from worker.tasks.base import TaskContext
from worker.transport.aws import aws_client

# The export's selection: every n-th cell, so that it is spread over the whole store.
EXPORTED_CELLS = 10_000
EXPORT = "GetNormalizedExpression"
STARTING_NODES = "GetTrajectoryAnalysisStartingNodes"
PSEUDO_TIME = "GetTrajectoryAnalysisPseudoTime"
V2_END_TO_END = "GeneExpression v2, 1 gene, end to end"


def run(tier: Tier, groups: list[str]) -> dict:
    store_root = tier.folder / "store"
    if not (store_root / EXPERIMENT / "manifest.json").exists():
        raise SystemExit(f"no store in {store_root}: run `make bench TIER={tier.name}` first")
    emulator = Emulator(_free_port()).ready()
    try:
        settings = load_settings(
            {
                "CLUSTER_ENV": "test",
                "AWS_ENDPOINT_URL": emulator.url,
                "WORKER_STORE_ROOT": str(store_root),
                "WORKER_REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0",
                "WORKER_POLL_WAIT": "1",
            }
        )
        load_conf(Path(settings.conf_dir))
        dask.config.set({"worker.warm-up-numba": tier.numba_warm})
        provision(settings)
        with start_local_cluster(dashboard_address=":0") as cluster, Client(cluster) as client:
            _wait_until_warm(client)
            worker_pids = client.run(os.getpid)
            with RssSampler([os.getpid(), *worker_pids.values()]) as sampler:
                measures = _measures(client, settings, groups, sampler)
                if "v2" in groups:
                    # It starts the Redis of the settings, where the browser's notifications go.
                    with _queue_worker_process(
                        settings, cluster.scheduler_address, tier.folder
                    ) as queue_worker:
                        sampler.watch(queue_worker.pid)
                        measures[V2_END_TO_END] = _v2_end_to_end(settings, tier, sampler)
                peaks = {"benchmark process (client)": peak_rss_mib()} | {
                    f"Dask worker {worker_pids[address]}": peak
                    for address, peak in client.run(peak_rss_mib).items()
                }
    finally:
        emulator.stop()
    return {"tier": tier.name, "measures": measures, "peak_rss_mib_by_process": peaks}


def _measures(client: Client, settings, groups: list[str], sampler: RssSampler) -> dict:
    context = TaskContext.for_experiment(settings, EXPERIMENT)
    store = open_experiment(settings.store_root, EXPERIMENT, settings.aws)
    runs = []
    if "export" in groups:
        n_cells = store.n_cells
        exported = np.arange(0, n_cells, max(1, n_cells // EXPORTED_CELLS))
        export_labels = np.zeros(n_cells, dtype=np.int64)
        export_labels[exported] = 1
        update_cell_sets(
            context.cell_sets_location,
            lambda current: [
                cluster_hierarchy(
                    "export", "Exported", export_labels, child_names=["rest", "exported"]
                )
            ],
        )
        export_key = secrets.token_hex(16)
        export_context = dataclasses.replace(
            context,
            result_file=ResultFile(settings.aws, settings.v2_results_bucket, export_key),
        )
        export_name = f"{EXPORT}, {len(exported)} cells"
        body = {"name": EXPORT, "subsetBy": {"customCellSets": ["export-1"]}}
        runs.append((export_name, export_context, "v2", body))
    if "trajectory" in groups:
        embedding_etag = _stored_pca_embedding(settings, store.pca_coordinates())
        trajectory = {
            "name": STARTING_NODES,
            "embedding": {"ETag": embedding_etag, "method": "umap", "methodSettings": {}},
            "clustering": {"method": "louvain", "resolution": 0.8},
            "cellSets": [],
        }
        runs += [
            (f"{STARTING_NODES}, every cell", context, "v2", trajectory),
            (
                f"{PSEUDO_TIME}, every cell, from node 0",
                context,
                "v2",
                {**trajectory, "name": PSEUDO_TIME, "rootNodes": [0]},
            ),
        ]
    runs += [
        (
            f"GetEmbedding {method}, {when}",
            context,
            "seed",
            {"name": "GetEmbedding", "type": method},
        )
        for method in ("umap", "tsne")
        if method in groups
        for when in ("computed", "cached")
    ]
    if "doublets" in groups:
        runs += [
            (f"GetDoubletScore, {when}", context, "seed", {"name": "GetDoubletScore"})
            for when in ("computed", "cached")
        ]
    measures = {}
    for name, task_context, protocol, body in runs:
        print(f"running {name}", flush=True)
        sampler.take_peak_mib()
        started = time.perf_counter()
        in_task, answer = client.submit(
            timed_run_task, body, task_context, protocol, pure=False
        ).result()
        measures[name] = {
            "in_task_s": in_task,
            "round_trip_s": time.perf_counter() - started,
            "peak_rss_mib": sampler.take_peak_mib(),
            "answer_mib": len(answer) / (1 << 20),
        }
    if "export" in groups:
        s3 = aws_client("s3", settings.aws)
        exported_bytes = s3.head_object(Bucket=settings.v2_results_bucket, Key=export_key)
        measures[export_name]["file_mib"] = exported_bytes["ContentLength"] / (1 << 20)
    return measures


def _v2_end_to_end(settings, tier: Tier, sampler: RssSampler) -> dict:
    v2 = V2Client(settings)
    body = {"name": "GeneExpression", "genes": [ONE_GENE]}

    def once() -> dict[str, float]:
        message = v2.message(body, EXPERIMENT)
        started = time.perf_counter()
        # A message group of its own: the API sends every message in one group, which SQS
        # holds back while the group's previous message is in flight (see the README).
        v2.send(message, group_id=secrets.token_hex(8))
        v2.notification(message, timeout_s=300)
        notified = time.perf_counter() - started
        v2.answer(message, timeout_s=300)
        return {"send_to_notified": notified, "send_to_decoded": time.perf_counter() - started}

    try:
        return repeat(once, tier.light_repeats, sampler)
    finally:
        v2.close()


def _stored_pca_embedding(settings, coordinates: np.ndarray) -> str:
    """`coordinates` stored as a v2 GetEmbedding result (zstd JSON, a point per cell), as the
    API finds it by ETag; returns the ETag."""
    etag = secrets.token_hex(16)
    stored = zstandard.ZstdCompressor(level=3).compress(dumps(coordinates.tolist()))
    aws_client("s3", settings.aws).put_object(
        Bucket=settings.v2_results_bucket, Key=etag, Body=stored
    )
    return etag


def markdown(result: dict, command: str) -> str:
    lines = [
        f"`{command}`, tier {result['tier']}:",
        "",
        "| task | in task | round trip | peak MiB (any process) | answer MiB | file MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, measure in result["measures"].items():
        if name == V2_END_TO_END:
            continue
        file_mib = f"{measure['file_mib']:.1f}" if "file_mib" in measure else ""
        lines.append(
            f"| {name} | {measure['in_task_s']:.2f} s | {measure['round_trip_s']:.2f} s "
            f"| {measure['peak_rss_mib']:.0f} | {measure['answer_mib']:.2f} | {file_mib} |"
        )
    if V2_END_TO_END in result["measures"]:
        end_to_end = result["measures"][V2_END_TO_END]
        lines += ["", f"{V2_END_TO_END}:", ""]
        lines += [
            f"- {label}: p50 {timing['p50_s'] * 1000:.1f} ms, p90 {timing['p90_s'] * 1000:.1f} ms "
            f"({timing['runs']} runs)"
            for label, timing in (
                (
                    "sent to notified (stored, the socket.io event in Redis)",
                    end_to_end["send_to_notified"],
                ),
                (
                    "sent to decoded (downloaded by the signed URL, zstd and JSON decoded)",
                    end_to_end["send_to_decoded"],
                ),
            )
        ]
    lines += ["", "Peak memory (ru_maxrss) of each process, MiB:", ""]
    lines += [
        f"- {process}: {peak:.0f}" for process, peak in result["peak_rss_mib_by_process"].items()
    ]
    return "\n".join(lines) + "\n"
