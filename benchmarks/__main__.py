"""`python -m benchmarks --tier T [--out DIR]`: generate the tier's data once, run scanpy's side,
ours and TileDB-SOMA's, each in a process of its own, and write DIR/T.json and DIR/T.md.
`--scaling T1,T2,...`: our side on each tier, and the scaling table (benchmarks/scaling.py).
`--long-tasks [GROUPS]`: the long-running tasks on the store the tier's last run left
(benchmarks/long_tasks.py), written to DIR/long-T.json and DIR/long-T.md."""

import argparse
import shlex
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import h5py
import psutil

from benchmarks.tiers import EXPERIMENT, TIERS, Tier, ensure_source
from worker.jsonio import dumps, loads

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("scanpy", "ours", "soma")
# The long-running tasks, in the order they run (benchmarks/long_tasks.py).
LONG_TASK_GROUPS = ("export", "trajectory", "umap", "tsne", "doublets", "v2")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--tier", choices=TIERS, default="small")
    parser.add_argument(
        "--store",
        choices=("local", "s3"),
        default="local",
        help="where our store lives: a local folder, or the emulator's S3 behind a proxy that "
        "adds latency (each measure then at 0 ms and at 25 ms)",
    )
    parser.add_argument(
        "--sides",
        default=",".join(SIDES),
        help="the sides to run, comma separated (ours always runs; default: all)",
    )
    parser.add_argument(
        "--scaling",
        metavar="TIERS",
        help="run our side on each of these tiers (comma separated, smallest first) and write "
        "the scaling table into benchmarks/README.md",
    )
    parser.add_argument(
        "--long-tasks",
        nargs="?",
        const=",".join(LONG_TASK_GROUPS),
        metavar="GROUPS",
        help="run the long-running tasks on the store the tier's last run left, our side only: "
        f"the groups named, comma separated, of {', '.join(LONG_TASK_GROUPS)} (default: all)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    # One side's run, in the process this command starts for it.
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tier = TIERS[args.tier]
    if args.side == "ours":
        from benchmarks import ours

        args.result.write_bytes(dumps(ours.run(tier, args.store)))
    elif args.side == "scanpy":
        from benchmarks import scanpy_side

        args.result.write_bytes(dumps(scanpy_side.run(tier)))
    elif args.side == "soma":
        from benchmarks import soma_side

        result = soma_side.run(tier, tier.folder / "store", EXPERIMENT)
        args.result.write_bytes(dumps(result))
    elif args.long_tasks:
        from benchmarks import long_tasks

        groups = args.long_tasks.split(",")
        unknown = sorted(set(groups) - set(LONG_TASK_GROUPS))
        if unknown:
            parser.error(f"--long-tasks: no group {', '.join(unknown)}")
        result = long_tasks.run(tier, groups)
        text = long_tasks.markdown(result, shlex.join(["python", "-m", "benchmarks", *argv]))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"long-{tier.name}.json").write_bytes(dumps(result))
        (args.out / f"long-{tier.name}.md").write_text(text)
        print(f"\n{text}")
    elif args.scaling:
        names = [name.strip() for name in args.scaling.split(",") if name.strip()]
        if not set(names) <= set(TIERS):
            parser.error(f"--scaling: unknown tier(s) {', '.join(set(names) - set(TIERS))}")
        command = shlex.join(["python", "-m", "benchmarks", *argv])
        scaling_run([TIERS[name] for name in names], args.store, args.out, command)
    else:
        sides = {side.strip() for side in args.sides.split(",") if side.strip()}
        if not sides <= set(SIDES):
            parser.error(f"--sides: unknown side(s) {', '.join(sorted(sides - set(SIDES)))}")
        command = shlex.join(["python", "-m", "benchmarks", *argv])
        benchmark(tier, args.store, sides, args.out, command)
    return 0


def describe_dataset(tier: Tier) -> dict:
    """The tier's h5ad (generated first if it is not there yet)."""
    print(f"tier {tier.name}: {tier.source}", flush=True)
    generated_s = ensure_source(tier)
    with h5py.File(tier.source, "r") as file:
        nnz = int(file["X/indptr"][-1])
    dataset = {
        "n_cells": tier.dataset.n_cells,
        "n_genes": tier.dataset.n_genes,
        "nnz": nnz,
        "h5ad_mib": tier.source.stat().st_size / (1 << 20),
        "generated": "cached" if generated_s is None else f"generated in {generated_s:.0f} s",
    }
    print(f"data: {dataset}", flush=True)
    return dataset


def benchmark(tier: Tier, store: str, sides: set[str], out: Path, command: str) -> None:
    from benchmarks import report
    from benchmarks.scanpy_side import estimated_peak_bytes

    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    host = report.machine()
    dataset = describe_dataset(tier)
    nnz = dataset["nnz"]
    needed = estimated_peak_bytes(tier.dataset.n_cells, nnz)
    available = psutil.virtual_memory().available
    if "scanpy" not in sides:
        scanpy = {"skipped": "not run: left out by --sides"}
    elif needed > available:
        scanpy = {
            "skipped": f"not run: its estimated peak memory, {needed / (1 << 30):.1f} GiB, is "
            f"more than the {available / (1 << 30):.1f} GiB available"
        }
        print(f"scanpy {scanpy['skipped']}", flush=True)
    else:
        scanpy = _run_side("scanpy", tier)
    ours = _run_side("ours", tier, "--store", store)
    if "skipped" in ours:
        raise SystemExit(f"our side failed: {ours['skipped']}")
    # After ours: it reads our store, from the local folder our side wrote it to.
    if "soma" not in sides:
        soma = {"skipped": "not run: left out by --sides"}
    elif store != "local":
        soma = {"skipped": "not run: it reads our store from a local folder (--store local)"}
    else:
        soma = _run_side("soma", tier)

    header = {"tier": tier.name, "store": store, "command": command, "started_at": started_at}
    combined = report.combine(header | {"machine": host, "dataset": dataset}, ours, scanpy, soma)
    out.mkdir(parents=True, exist_ok=True)
    name = tier.name if store == "local" else f"{tier.name}-{store}"
    (out / f"{name}.json").write_bytes(dumps(combined))
    (out / f"{name}.md").write_text(report.markdown(combined))
    print(f"\n{report.measures_table(combined)}\n")
    if store == "s3":
        print(f"{report.s3_table(combined)}\n")
    if combined["soma"]:
        print(f"{report.soma_table(combined)}\n")
    print(f"wrote {out / f'{name}.json'} and {out / f'{name}.md'}")


def scaling_run(tiers: list[Tier], store: str, out: Path, command: str) -> None:
    from benchmarks import report, scaling

    runs = []
    for tier in tiers:
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        host = report.machine()
        dataset = describe_dataset(tier)
        ours = _run_side("ours", tier, "--store", store)
        if "skipped" in ours:
            raise SystemExit(f"our side failed on {tier.name}: {ours['skipped']}")
        header = {"tier": tier.name, "store": store, "command": command, "started_at": started_at}
        skipped = {"skipped": "not run: --scaling runs our side only"}
        combined = report.combine(
            header | {"machine": host, "dataset": dataset}, ours, skipped, skipped
        )
        # Each tier's own table too, so that a tier run only here (large) has one.
        name = f"scaling-{tier.name}" if store == "local" else f"scaling-{tier.name}-{store}"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_bytes(dumps(combined))
        (out / f"{name}.md").write_text(report.markdown(combined))
        runs.append(scaling.summarise(combined))
    text = scaling.markdown(runs, command)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_bytes(dumps(runs))
    (out / "scaling.md").write_text(text)
    scaling.write_into_readme(ROOT / "benchmarks" / "README.md", text)
    print(f"\n{text}")
    print(f"wrote {out / 'scaling.json'}, {out / 'scaling.md'} and benchmarks/README.md")


def _run_side(side: str, tier: Tier, *options: str) -> dict:
    """One side's results, run in a process of its own; `{"skipped": why}` if it failed."""
    print(f"running the {side} side", flush=True)
    with tempfile.TemporaryDirectory(prefix="benchmarks-") as folder:
        result = Path(folder) / f"{side}.json"
        command = [sys.executable, "-m", "benchmarks", "--tier", tier.name, "--side", side]
        command += options
        finished = subprocess.run([*command, "--result", str(result)], cwd=ROOT, check=False)
        if finished.returncode != 0:
            return {"skipped": f"its process failed with exit status {finished.returncode}"}
        return loads(result.read_bytes())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
