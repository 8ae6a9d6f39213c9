"""`python -m benchmarks --tier tiny` end to end: every measure, every side, in the JSON; and
the same on S3, our side only, with its request counts."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.report import MEASURES, s3_latency
from benchmarks.scaling import PARALLEL_STAGES
from benchmarks.soma_side import QUERIES as SOMA_QUERIES
from worker.jsonio import loads
from worker.store.build import STAGES

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ("in_task", "round_trip", "send_to_sns")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tiny_tier_reports_every_measure_with_timings_memory_and_ratios(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tier", "tiny", "--out", str(tmp_path)],
        cwd=ROOT,
        check=True,
        timeout=850,
    )
    report = loads((tmp_path / "tiny.json").read_bytes())
    assert report["scanpy_skipped"] is None
    assert list(report["measures"]) == list(MEASURES)
    for name, measure in report["measures"].items():
        timings = [measure["ours"][key] for key in TIMINGS if key in measure["ours"]]
        assert timings, name
        for timing in timings:
            assert 0 < timing["p50_s"] <= timing["p90_s"], name
        assert measure["ours"]["peak_rss_mib"] > 0, name
        if name.endswith("send to SNS") or "v2" in name:
            assert measure["scanpy"] is None and measure["ratio"] is None
            continue
        assert measure["scanpy"]["in_process"]["p50_s"] > 0, name
        assert measure["scanpy"]["peak_rss_mib"] > 0, name
        assert set(measure["ratio"]) == {"p50", "p90", "peak_rss"}, name
    answers = {name: m["ours"].get("answer_mib") for name, m in report["measures"].items()}
    # The platform's answer leaves out the barcodes and the zeros the seed's lists.
    assert 0 < answers["GeneExpression v2, 1 gene"] < answers["GeneExpression, 1 gene"]
    stages = report["measures"]["PrepareExperiment"]["ours"]["stages_s"]
    assert list(stages) == list(STAGES) and all(seconds >= 0 for seconds in stages.values())
    processes = report["peak_rss_mib_by_process"]["ours"]
    queue_worker_peak = processes["worker process (python -m worker)"]
    assert processes["benchmark process (client)"] > 0
    assert 0 < report["worker_process_idle_rss_mib"] <= queue_worker_peak
    assert any(process.startswith("Dask worker") for process in processes)
    assert report["peak_rss_mib_by_process"]["scanpy"]["scanpy process"] > 0
    soma = report["soma"]
    assert soma["ingest"]["in_process"]["p50_s"] > 0
    assert soma["size_on_disk_mib"]["soma"] > 0 and soma["size_on_disk_mib"]["ours"] > 0
    assert list(soma["queries"]) == list(SOMA_QUERIES)
    for name, sides in soma["queries"].items():
        for side in ("ours", "soma"):
            timing = sides[side]["in_process"]
            assert 0 < timing["p50_s"] <= timing["p90_s"], (name, side)
    assert report["peak_rss_mib_by_process"]["TileDB-SOMA"]["TileDB-SOMA process"] > 0
    markdown = (tmp_path / "tiny.md").read_text()
    assert "| PrepareExperiment |" in markdown and "| read 1 gene, all cells |" in markdown

    # The long-running v2 tasks, on the store that run left.
    subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tier", "tiny", "--long-tasks", "--out",
         str(tmp_path)],
        cwd=ROOT,
        check=True,
        timeout=600,
    )  # fmt: skip
    long_tasks = loads((tmp_path / "long-tiny.json").read_bytes())
    n_cells = report["dataset"]["n_cells"]
    embeddings = [
        f"GetEmbedding {method}, {when}"
        for method in ("umap", "tsne")
        for when in ("computed", "cached")
    ]
    assert list(long_tasks["measures"]) == [
        f"GetNormalizedExpression, {n_cells} cells",
        "GetTrajectoryAnalysisStartingNodes, every cell",
        "GetTrajectoryAnalysisPseudoTime, every cell, from node 0",
        *embeddings,
        "GetDoubletScore, computed",
        "GetDoubletScore, cached",
        "GeneExpression v2, 1 gene, end to end",
    ]
    [export, starting_nodes, pseudo_time, *embedded, doublets, doublets_again, end_to_end] = (
        long_tasks["measures"].values()
    )
    # The gzipped CSV: more than a byte per twenty values of the cells x genes it holds.
    assert export["file_mib"] * (1 << 20) > n_cells * report["dataset"]["n_genes"] / 20
    for measure in (export, starting_nodes, pseudo_time, *embedded, doublets, doublets_again):
        assert 0 < measure["in_task_s"] <= measure["round_trip_s"]
        assert measure["peak_rss_mib"] > 0
    assert starting_nodes["answer_mib"] > 0 and pseudo_time["answer_mib"] > 0
    # An embedding asked again is the cached one: the same answer.
    umap, umap_again, tsne, tsne_again = embedded
    assert umap["answer_mib"] == umap_again["answer_mib"] > 0
    assert tsne["answer_mib"] == tsne_again["answer_mib"] > 0
    assert doublets["answer_mib"] == doublets_again["answer_mib"] > 0
    notified, decoded = end_to_end["send_to_notified"], end_to_end["send_to_decoded"]
    assert 0 < notified["p50_s"] <= notified["p90_s"]
    # Each run is decoded after it is notified.
    assert notified["p50_s"] < decoded["p50_s"] and notified["p90_s"] < decoded["p90_s"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tiny_tier_on_s3_reports_requests_at_both_latencies(tmp_path):
    """`--store s3` (our side only): each measure at 0 ms and at 25 ms, with the S3 requests
    the proxy saw; the reads repeat the same requests at either latency (give or take a
    manifest read), and the report has the S3 table with its goals."""
    subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tier", "tiny", "--store", "s3",
         "--sides", "ours", "--out", str(tmp_path)],
        cwd=ROOT,
        check=True,
        timeout=850,
    )  # fmt: skip
    report = loads((tmp_path / "tiny-s3.json").read_bytes())
    assert report["store"] == "s3" and "--sides" in report["scanpy_skipped"]
    reads = ("GeneExpression, 1 gene", "GeneExpression, 20 genes", "GetEmbedding pca")
    for name, measure in report["measures"].items():
        by_latency = measure["ours"]["s3"]["by_latency"]
        assert set(by_latency) == {"0 ms", "25 ms"}, name
        figures = s3_latency(measure["ours"])
        assert figures["requests_per_run"] >= 0 and figures["mib_per_run"] >= 0, name
        assert figures["p50_s"] > 0 and figures["p50_with_latency_s"] > 0, name
        if name in reads or name in ("PrepareExperiment", "DifferentialExpression"):
            assert figures["requests_per_run"] > 0, name
        if name in reads:
            # Warm: the same GETs each run; a manifest read more in some runs at most.
            difference = figures["requests_per_run"] - figures["requests_per_run_with_latency"]
            assert abs(difference) <= 1, name
    prepare = report["measures"]["PrepareExperiment"]["ours"]["s3"]["by_latency"]["0 ms"]
    assert prepare["s3_mib_sent_per_run"] > 0  # the store was written to S3
    markdown = (tmp_path / "tiny-s3.md").read_text()
    assert "sequential round trips" in markdown and "| GetEmbedding pca |" in markdown


def test_the_stages_that_scale_out_are_stages_of_the_build():
    assert set(PARALLEL_STAGES) <= set(STAGES)
