"""Both sides' results combined into one report (ratios ours / scanpy), the machine it ran on,
and the report as markdown."""

import os
import platform
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import psutil

from worker.service.cluster import AGREEING_PACKAGES

MEASURES = (
    "PrepareExperiment",
    "ListGenes",
    "GeneExpression, 1 gene",
    "GeneExpression, 20 genes",
    "GetEmbedding pca",
    "DifferentialExpression",
    "GeneExpression, 1 gene, send to SNS",
)
# The timing each side reports a measure by, the first found.
MAIN_TIMINGS = ("in_task", "send_to_sns", "in_process")
PACKAGES = (*AGREEING_PACKAGES, "h5py", "igraph", "pynndescent", "umap-learn", "moto", "psutil")


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo")
    models = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "cpu": models[0] if models else platform.processor(),
        "load_average_at_start": [round(load, 2) for load in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: version(name) for name in PACKAGES},
    }


def combine(header: dict, ours: dict, scanpy: dict) -> dict:
    """The report: `header` (tier, command, machine, dataset), then per measure each side's
    timings and peak memory and their ratios; `scanpy` may be `{"skipped": reason}`."""
    measures = {}
    for name in MEASURES:
        mine, theirs = ours["measures"][name], scanpy.get("measures", {}).get(name)
        measures[name] = {"ours": mine, "scanpy": theirs, "ratio": theirs and _ratios(mine, theirs)}
    return {
        **header,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "scanpy_skipped": scanpy.get("skipped"),
        "measures": measures,
        "worker_process_idle_rss_mib": ours["worker_process_idle_rss_mib"],
        "peak_rss_mib_by_process": {
            "ours": ours["peak_rss_mib_by_process"],
            "scanpy": scanpy.get("peak_rss_mib_by_process"),
        },
        "scanpy_pipeline_steps_s": scanpy.get("pipeline_steps_s"),
    }


def main_timing(measure: dict) -> dict:
    return next(measure[name] for name in MAIN_TIMINGS if name in measure)


def _ratios(ours: dict, scanpy: dict) -> dict:
    mine, theirs = main_timing(ours), main_timing(scanpy)
    return {
        "p50": mine["p50_s"] / theirs["p50_s"],
        "p90": mine["p90_s"] / theirs["p90_s"],
        "peak_rss": ours["peak_rss_mib"] / scanpy["peak_rss_mib"],
    }


def measures_table(report: dict) -> str:
    rows = [
        "| measure | ours p50 | ours p90 | ours round trip p50 | ours peak MiB "
        "| scanpy p50 | scanpy p90 | scanpy peak MiB | ours/scanpy p50 | ours/scanpy peak |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, measure in report["measures"].items():
        ours, scanpy, ratio = measure["ours"], measure["scanpy"], measure["ratio"]
        timing = main_timing(ours)
        round_trip = ours.get("round_trip")
        cells = [
            name,
            _seconds(timing["p50_s"]),
            _seconds(timing["p90_s"]),
            _seconds(round_trip["p50_s"]) if round_trip else "",
            f"{ours['peak_rss_mib']:.0f}",
        ]
        if scanpy:
            theirs = main_timing(scanpy)
            cells += [
                _seconds(theirs["p50_s"]),
                _seconds(theirs["p90_s"]),
                f"{scanpy['peak_rss_mib']:.0f}",
                f"{ratio['p50']:.3g}",
                f"{ratio['peak_rss']:.3g}",
            ]
        else:
            cells += ["n/a"] * 5
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def markdown(report: dict) -> str:
    host, dataset = report["machine"], report["dataset"]
    packages = ", ".join(f"{name} {number}" for name, number in host["packages"].items())
    lines = [
        f"# Benchmark, tier {report['tier']}",
        "",
        f"`{report['command']}`, finished {report['finished_at']}.",
        "",
        f"Machine: {host['cores']} cores, {host['memory_gib']} GiB, {host['cpu']}; "
        f"load average at start {host['load_average_at_start']}; {host['platform']}; "
        f"Python {host['python']}; {packages}.",
        "",
        f"Data: {dataset['n_cells']} cells x {dataset['n_genes']} genes, {dataset['nnz']} "
        f"nonzeros, h5ad of {dataset['h5ad_mib']:.0f} MiB ({dataset['generated']}).",
        "",
    ]
    if report["scanpy_skipped"]:
        lines += [f"scanpy: {report['scanpy_skipped']}", ""]
    lines += [measures_table(report), "", "Peak memory (ru_maxrss) of each process, MiB:", ""]
    lines += ["| side | process | peak MiB |", "| --- | --- | ---: |"]
    for side, peaks in report["peak_rss_mib_by_process"].items():
        for process, peak in (peaks or {}).items():
            lines.append(f"| {side} | {process} | {peak:.0f} |")
    lines += [
        "",
        "Worker process resident memory when idle (`python -m worker` connected to the "
        f"cluster, listening, before its first request): "
        f"{report['worker_process_idle_rss_mib']:.0f} MiB.",
    ]
    if report["scanpy_pipeline_steps_s"]:
        lines += ["", "scanpy pipeline steps:", "", "| step | time |", "| --- | ---: |"]
        lines += [
            f"| {step} | {_seconds(seconds)} |"
            for step, seconds in report["scanpy_pipeline_steps_s"].items()
        ]
    lines += ["", "What each number means: benchmarks/README.md.", ""]
    return "\n".join(lines)


def _seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
