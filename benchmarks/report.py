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
    "GeneExpression v2, 1 gene",
)
# The goals with S3 at 25 ms a request (docs/DESIGN.md): at most so many sequential round
# trips, or at most so many times the time without the added latency.
S3_GOALS = {
    "PrepareExperiment": ("time", 1.5),
    "ListGenes": ("round trips", 1),
    "GeneExpression, 1 gene": ("round trips", 2),
    "GetEmbedding pca": ("round trips", 2),
    "DifferentialExpression": ("time", 1.5),
}
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


def combine(header: dict, ours: dict, scanpy: dict, soma: dict | None = None) -> dict:
    """The report: `header` (tier, command, machine, dataset), then per measure each side's
    timings and peak memory and their ratios; `scanpy` and `soma` (the TileDB-SOMA side) may
    be `{"skipped": reason}`."""
    soma = soma or {"skipped": "not run"}
    measures = {}
    for name in MEASURES:
        mine, theirs = ours["measures"][name], scanpy.get("measures", {}).get(name)
        measures[name] = {"ours": mine, "scanpy": theirs, "ratio": theirs and _ratios(mine, theirs)}
    return {
        **header,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "store": ours.get("store", "local"),
        "scanpy_skipped": scanpy.get("skipped"),
        "measures": measures,
        "worker_process_idle_rss_mib": ours["worker_process_idle_rss_mib"],
        "peak_rss_mib_by_process": {
            "ours": ours["peak_rss_mib_by_process"],
            "scanpy": scanpy.get("peak_rss_mib_by_process"),
            "TileDB-SOMA": soma.get("peak_rss_mib_by_process"),
        },
        "soma_skipped": soma.get("skipped"),
        "soma": None if "skipped" in soma else soma,
        "scanpy_pipeline_steps_s": scanpy.get("pipeline_steps_s"),
    }


def main_timing(measure: dict) -> dict:
    return next(measure[name] for name in MAIN_TIMINGS if name in measure)


def s3_latency(measure: dict) -> dict | None:
    """A measure's S3 figures: requests per run, p50 at 0 ms and at the added latency, their
    ratio and the sequential round trips paid (added time over added latency)."""
    s3 = measure.get("s3")
    if s3 is None:
        return None
    added = s3["added_latency_s"]
    without, with_latency = s3["by_latency"]["0 ms"], s3["by_latency"][f"{added * 1000:g} ms"]
    p50_without, p50_with = main_timing(without)["p50_s"], main_timing(with_latency)["p50_s"]
    return {
        "added_latency_s": added,
        "requests_per_run": without["s3_requests_per_run"],
        "requests_per_run_with_latency": with_latency["s3_requests_per_run"],
        "mib_per_run": without["s3_mib_sent_per_run"] + without["s3_mib_received_per_run"],
        "p50_s": p50_without,
        "p50_with_latency_s": p50_with,
        "ratio": p50_with / p50_without,
        "round_trips": (p50_with - p50_without) / added,
    }


def s3_table(report: dict) -> str:
    rows = [
        "| measure | S3 requests per run | S3 MiB per run | p50 at 0 ms | p50 at 25 ms | ratio "
        "| sequential round trips | goal | met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name, measure in report["measures"].items():
        figures = s3_latency(measure["ours"])
        if figures is None:
            continue
        goal, met = "", ""
        if name in S3_GOALS:
            kind, limit = S3_GOALS[name]
            if kind == "time":
                goal, met = f"at most {limit:g}x", figures["ratio"] <= limit
            else:
                goal, met = f"at most {limit:g} round trip(s)", figures["round_trips"] <= limit
            met = "yes" if met else "no"
        rows.append(
            f"| {name} | {figures['requests_per_run']:.1f} | {figures['mib_per_run']:.1f} "
            f"| {_seconds(figures['p50_s'])} | {_seconds(figures['p50_with_latency_s'])} "
            f"| {figures['ratio']:.2f} | {figures['round_trips']:.1f} | {goal} | {met} |"
        )
    return "\n".join(rows)


def soma_table(report: dict) -> str:
    """TileDB-SOMA against our store: ingest (theirs) against PrepareExperiment (ours, which
    does much more), size on disk, and each read timed alike in one process."""
    soma = report["soma"]
    prepare = main_timing(report["measures"]["PrepareExperiment"]["ours"])
    stages = report["measures"]["PrepareExperiment"]["ours"].get("stages_s", {})
    ingest = soma["ingest"]["in_process"]["p50_s"]
    rows = [
        "| measure | ours p50 | ours p90 | TileDB-SOMA p50 | TileDB-SOMA p90 | ours/TileDB-SOMA |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| ingest: our PrepareExperiment (all stages) vs from_h5ad "
        f"| {_seconds(prepare['p50_s'])} |  | {_seconds(ingest)} |  "
        f"| {prepare['p50_s'] / ingest:.3g} |",
    ]
    if "ingest" in stages:
        rows.append(
            f"| ingest: our ingest stage alone (X written, QC) vs from_h5ad "
            f"| {_seconds(stages['ingest'])} |  | {_seconds(ingest)} |  "
            f"| {stages['ingest'] / ingest:.3g} |"
        )
    sizes = soma["size_on_disk_mib"]
    rows.append(
        f"| size on disk, MiB (ours: both copies of the counts, PCA, graph) "
        f"| {sizes['ours']:.0f} |  | {sizes['soma']:.0f} |  | {sizes['ours'] / sizes['soma']:.3g} |"
    )
    for name, sides in soma["queries"].items():
        ours, theirs = sides["ours"]["in_process"], sides["soma"]["in_process"]
        rows.append(
            f"| {name} | {_seconds(ours['p50_s'])} | {_seconds(ours['p90_s'])} "
            f"| {_seconds(theirs['p50_s'])} | {_seconds(theirs['p90_s'])} "
            f"| {ours['p50_s'] / theirs['p50_s']:.3g} |"
        )
    return "\n".join(rows)


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
    where = {"local": "a local folder", "s3": "the emulator's S3 behind the latency proxy"}
    lines = [
        f"# Benchmark, tier {report['tier']}, store on {where[report['store']]}",
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
    lines += [measures_table(report), ""]
    sizes = [
        f"{name} {measure['ours']['answer_mib']:.2f} MiB"
        for name, measure in report["measures"].items()
        if "answer_mib" in measure["ours"]
    ]
    lines += [f"Answer sizes (JSON, as the task returns it): {'; '.join(sizes)}.", ""]
    if report["store"] == "s3":
        lines += [
            "S3 requests per run and sequential round trips (at 0 ms and at 25 ms per request, "
            "in the same run; the table above is at 0 ms):",
            "",
            s3_table(report),
            "",
        ]
    if report["soma"]:
        lines += [
            "TileDB-SOMA on the same h5ad (`tiledbsoma.io.from_h5ad`), each read also made on "
            "our store in the same process (raw counts as a scipy matrix on both sides, checked "
            "equal):",
            "",
            soma_table(report),
            "",
        ]
    elif report.get("soma_skipped"):
        lines += [f"TileDB-SOMA: {report['soma_skipped']}", ""]
    stages = report["measures"]["PrepareExperiment"]["ours"].get("stages_s")
    if stages:
        lines += ["Our PrepareExperiment stage by stage:", "", "| stage | time |"]
        lines += ["| --- | ---: |"]
        lines += [f"| {stage} | {_seconds(seconds)} |" for stage, seconds in stages.items()]
        lines += [""]
    lines += ["Peak memory (ru_maxrss) of each process, MiB:", ""]
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
