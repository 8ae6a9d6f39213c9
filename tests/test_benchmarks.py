"""`python -m benchmarks --tier tiny` end to end: every measure, both sides, in the JSON."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.report import MEASURES
from worker.jsonio import loads

ROOT = Path(__file__).resolve().parents[1]


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
        timings = [value for value in measure["ours"].values() if isinstance(value, dict)]
        assert timings, name
        for timing in timings:
            assert 0 < timing["p50_s"] <= timing["p90_s"], name
        assert measure["ours"]["peak_rss_mib"] > 0, name
        if name.endswith("send to SNS"):
            assert measure["scanpy"] is None and measure["ratio"] is None
            continue
        assert measure["scanpy"]["in_process"]["p50_s"] > 0, name
        assert measure["scanpy"]["peak_rss_mib"] > 0, name
        assert set(measure["ratio"]) == {"p50", "p90", "peak_rss"}, name
    processes = report["peak_rss_mib_by_process"]["ours"]
    queue_worker_peak = processes["worker process (python -m worker)"]
    assert processes["benchmark process (client)"] > 0
    assert 0 < report["worker_process_idle_rss_mib"] <= queue_worker_peak
    assert any(process.startswith("Dask worker") for process in processes)
    assert report["peak_rss_mib_by_process"]["scanpy"]["scanpy process"] > 0
    assert "| PrepareExperiment |" in (tmp_path / "tiny.md").read_text()
