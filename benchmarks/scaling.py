"""`python -m benchmarks --scaling small,medium,large`: our side on each tier, one after another;
the peak memory of each process as the cells grow, and a projection of the prepare to 10M cells
from each stage's measured times. Written to DIR/scaling.json and .md, and into the section of
benchmarks/README.md between the markers below."""

import math
import re
from datetime import UTC, datetime
from pathlib import Path

from worker.store.build import STAGES

BEGIN = "<!-- scaling: written by `python -m benchmarks --scaling`, do not edit by hand -->"
END = "<!-- end of scaling -->"
MIB = 1 << 20
# O(cells x 50 floats): what a process may hold per cell (the PCA, the embeddings) and stay
# flat otherwise.
BYTES_PER_CELL_FLAT = 50 * 4
TEN_MILLION = 10_000_000
# Stages that run as one Dask task per block, and so spread over every worker's threads (the
# ingest of CSR sources: a task per shard of `X`; the gene-major copy's assembly runs beside the
# neighbours, and its stage is what is left of it after them); the others run in one process
# (neighbours and clustering: in memory on the PCA; tables: one writer).
PARALLEL_STAGES = ("ingest", "covariance scan", "projection", "gene-major copy")
WORKERS = (1, 2, 4, 8, 16, 32)
TARGET_S = 30 * 60


def summarise(report: dict) -> dict:
    """What the scaling table needs of one tier's report (`benchmarks.report.combine`)."""
    prepare = report["measures"]["PrepareExperiment"]["ours"]
    peaks = report["peak_rss_mib_by_process"]["ours"]
    processes = {"queue worker (python -m worker)": 0.0, "Dask worker(s), each": 0.0}
    for name, peak in peaks.items():
        if name.startswith("Dask worker"):
            processes["Dask worker(s), each"] = max(processes["Dask worker(s), each"], peak)
        elif name.startswith("worker process"):
            processes["queue worker (python -m worker)"] = peak
        else:
            processes["benchmark client (scheduler, submits)"] = peak
    return {
        "tier": report["tier"],
        "n_cells": report["dataset"]["n_cells"],
        "nnz": report["dataset"]["nnz"],
        "dask_workers": sum(name.startswith("Dask worker") for name in peaks),
        "peak_rss_mib": processes,
        "prepare_peak_all_processes_mib": prepare["peak_rss_mib"],
        "prepare_s": prepare["in_task"]["p50_s"],
        "stages_s": prepare.get("stages_s", {}),
        "s3": _prepare_s3(prepare),
    }


def _prepare_s3(prepare: dict) -> dict | None:
    s3 = prepare.get("s3")
    if s3 is None:
        return None
    without = s3["by_latency"]["0 ms"]
    return {
        "requests": without["s3_requests_per_run"],
        "mib_sent": without["s3_mib_sent_per_run"],
        "mib_received": without["s3_mib_received_per_run"],
    }


def scaling_table(runs: list[dict]) -> str:
    header = " | ".join(f"{run['n_cells']:,} cells" for run in runs)
    rows = [
        f"| process | {header} | growth between the two largest, per cell | flat beyond "
        "cells x 50 floats? |",
        "| --- |" + " ---: |" * len(runs) + " ---: | --- |",
    ]
    names = list(runs[-1]["peak_rss_mib"])
    for name in names:
        peaks = [run["peak_rss_mib"].get(name, math.nan) for run in runs]
        rows.append(_growth_row(name, runs, peaks))
    rows.append(
        _growth_row(
            "all processes, sampled together during the prepare",
            runs,
            [run["prepare_peak_all_processes_mib"] for run in runs],
        )
    )
    cells_x_50 = " | ".join(f"{run['n_cells'] * BYTES_PER_CELL_FLAT / MIB:.0f}" for run in runs)
    rows.append(f"| (cells x 50 float32) | {cells_x_50} | 200 B |  |")
    return "\n".join(rows)


def _growth_row(name: str, runs: list[dict], peaks: list[float]) -> str:
    cells = " | ".join(f"{peak:.0f}" for peak in peaks)
    if len(runs) < 2:
        return f"| {name} | {cells} |  |  |"
    added_cells = runs[-1]["n_cells"] - runs[-2]["n_cells"]
    per_cell = (peaks[-1] - peaks[-2]) * MIB / added_cells
    verdict = (
        "yes"
        if per_cell <= BYTES_PER_CELL_FLAT
        else f"no: {per_cell / BYTES_PER_CELL_FLAT:.1f}x cells x 50 floats"
    )
    return f"| {name} | {cells} | {per_cell:.0f} B | {verdict} |"


def stage_exponents(runs: list[dict]) -> dict[str, float]:
    """How each stage's time grows with the cells between the two largest tiers:
    t ~ cells^k."""
    small, large = runs[-2], runs[-1]
    ratio = math.log(large["n_cells"] / small["n_cells"])
    exponents = {}
    for stage in STAGES:
        before, after = small["stages_s"].get(stage), large["stages_s"].get(stage)
        if before and after and before > 0.5:
            exponents[stage] = max(math.log(after / before) / ratio, 1.0)
        else:
            exponents[stage] = 1.0
    return exponents


def projection(runs: list[dict], n_cells: int = TEN_MILLION) -> dict:
    """Each stage's time at `n_cells` on the measured machine (extrapolated from the largest
    tier with the exponent of `stage_exponents`), and the whole prepare on N such machines as
    Dask workers, the parallel stages divided among them."""
    largest = runs[-1]
    exponents = stage_exponents(runs)
    scale = n_cells / largest["n_cells"]
    stages = {
        stage: largest["stages_s"].get(stage, 0.0) * scale ** exponents[stage] for stage in STAGES
    }
    serial = sum(seconds for stage, seconds in stages.items() if stage not in PARALLEL_STAGES)
    parallel = sum(stages[stage] for stage in PARALLEL_STAGES)
    on_workers = {workers: serial + parallel / workers for workers in WORKERS}
    enough = next((workers for workers, seconds in on_workers.items() if seconds < TARGET_S), None)
    return {
        "n_cells": n_cells,
        "from_tier": largest["tier"],
        "exponents": exponents,
        "stages_s": stages,
        "serial_s": serial,
        "on_workers_s": on_workers,
        "workers_for_target": enough,
        "nnz": largest["nnz"] * scale,
        "s3": None
        if largest["s3"] is None
        else {key: value * scale for key, value in largest["s3"].items()},
    }


def projection_table(projected: dict) -> str:
    rows = [
        "| stage | grows as cells^k, k | 10M cells on 2 cores | scales out |",
        "| --- | ---: | ---: | --- |",
    ]
    for stage, seconds in projected["stages_s"].items():
        rows.append(
            f"| {stage} | {projected['exponents'][stage]:.2f} | {seconds / 60:.0f} min "
            f"| {'yes' if stage in PARALLEL_STAGES else 'no'} |"
        )
    rows += ["", "| Dask workers of 2 cores | prepare, 10M cells |", "| ---: | ---: |"]
    rows += [
        f"| {workers} | {seconds / 60:.0f} min |"
        for workers, seconds in projected["on_workers_s"].items()
    ]
    return "\n".join(rows)


def markdown(runs: list[dict], command: str) -> str:
    projected = projection(runs) if len(runs) >= 2 else None
    lines = [
        f"`{command}`, finished {datetime.now(UTC).isoformat(timespec='seconds')}.",
        "",
        "Peak resident memory (ru_maxrss) of each process over the whole run of our side, MiB:",
        "",
        scaling_table(runs),
        "",
        "PrepareExperiment: "
        + ", ".join(f"{run['n_cells']:,} cells {run['prepare_s']:.0f} s" for run in runs)
        + ".",
    ]
    if projected:
        enough = projected["workers_for_target"]
        lines += [
            "",
            f"Projected to 10M cells from the {projected['from_tier']} tier's stage times "
            "(each stage grown as it grew between the two largest tiers):",
            "",
            projection_table(projected),
            "",
            f"Stages that stay in one process: {projected['serial_s'] / 60:.0f} min. "
            + (
                f"Under 30 minutes from {enough} Dask workers of 2 cores."
                if enough
                else "Not under 30 minutes on any number of workers: the stages that stay "
                "in one process take longer than that alone."
            ),
        ]
    return "\n".join(lines) + "\n"


def write_into_readme(readme: Path, text: str) -> None:
    """Replace the section between the markers of `readme` with `text`."""
    content = readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(content):
        raise RuntimeError(f"{readme} has no scaling section between {BEGIN!r} and {END!r}")
    readme.write_text(pattern.sub(lambda _: f"{BEGIN}\n\n{text}\n{END}", content))
