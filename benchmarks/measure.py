"""Timings summarised as p50/p90, and peak memory: per process (ru_maxrss) and sampled across
processes (the sum of their resident memory, in a thread)."""

import contextlib
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil

MIB = 1 << 20
# Runs of a measure cut short by its time budget.
MIN_RUNS = 3


def summary(seconds: list[float]) -> dict:
    return {
        "runs": len(seconds),
        "p50_s": float(np.percentile(seconds, 50)),
        "p90_s": float(np.percentile(seconds, 90)),
    }


def peak_rss_mib() -> float:
    """This process's peak resident memory since it started (Linux counts ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_peak_rss_mib(pid: int) -> float:
    """A live child's peak resident memory (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def rss_mib(pid: int) -> float:
    """A process's resident memory now."""
    return psutil.Process(pid).memory_info().rss / MIB


class RssSampler:
    """The peak of the summed resident memory of some processes, sampled every `interval_s`.

    Sampling misses spikes shorter than the interval; ru_maxrss per process does not, but the
    sum of per-process peaks overstates a peak the processes did not reach together.
    """

    def __init__(self, pids: list[int], interval_s: float = 0.05):
        self._processes = [psutil.Process(pid) for pid in pids]
        self._interval_s = interval_s
        self._peak = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopping.set()
        self._thread.join()

    def watch(self, pid: int) -> None:
        """Count one more process from now on."""
        with self._lock:
            self._processes.append(psutil.Process(pid))

    def take_peak_mib(self) -> float:
        """The peak since the last call (or the start), in MiB; the next call starts anew."""
        self._sample()
        with self._lock:
            peak, self._peak = self._peak, 0
        return peak / MIB

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            self._sample()

    def _sample(self) -> None:
        total = 0
        with self._lock:
            processes = list(self._processes)
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        with self._lock:
            self._peak = max(self._peak, total)


def repeat(
    run_once: Callable[[], dict[str, float]],
    repeats: int,
    sampler: RssSampler,
    budget_s: float | None = None,
) -> dict:
    """Run once to warm up, then `repeats` times (or, with `budget_s`, as many as fit in it,
    at least `MIN_RUNS`): p50/p90 of each timing that `run_once` returns (name -> seconds),
    and the sampled peak memory while they ran."""
    run_once()
    sampler.take_peak_mib()
    started = time.perf_counter()
    runs = []
    while len(runs) < repeats:
        runs.append(run_once())
        over_budget = budget_s is not None and time.perf_counter() - started > budget_s
        if over_budget and len(runs) >= MIN_RUNS:
            break
    return {name: summary([run[name] for run in runs]) for name in runs[0]} | {
        "peak_rss_mib": sampler.take_peak_mib()
    }
