"""What a build is told (the plan and its options) and what it reports: stage progress, and the
summary the caller turns into cell sets."""

import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from worker.compute.graph import MIN_CELLS_FOR_GRAPH
from worker.settings import AwsSettings
from worker.store.writer import SHARD_ELEMENTS

log = logging.getLogger(__name__)

PROGRESS_TOPIC = "worker-prepare-progress"
STAGES = (
    "ingest",
    "highly variable genes",
    "covariance scan",
    "projection",
    "neighbours and clustering",
    "gene-major copy",
    "tables and metadata",
)


@dataclass(frozen=True)
class BuildOptions:
    rows_per_block: int = 5_000
    # Row blocks of the parallel passes hold about this many entries (64 MB as float32+int32).
    pass_block_entries: int = 8 << 20
    shard_elements: int = SHARD_ELEMENTS
    n_top_genes: int = 2000
    n_neighbors: int = 15
    min_cells_for_graph: int = MIN_CELLS_FOR_GRAPH
    resolution: float = 1.0
    random_state: int = 0
    # The orchestrator marks the version as being built this often; a version whose mark is
    # four times older than this was left by a build that died.
    heartbeat_s: float = 30.0


@dataclass(frozen=True)
class BuildPlan:
    """Where one store version is built and how; travels to the Dask tasks of the build."""

    url: str
    aws: AwsSettings
    options: BuildOptions = field(default_factory=BuildOptions)

    @property
    def scratch(self) -> str:
        return f"{self.url}/_scratch"


@dataclass(frozen=True)
class BuildSummary:
    n_cells: int
    n_genes: int
    nnz: int
    sample_names: list[str]
    sample_codes: np.ndarray = field(repr=False)
    cluster_labels: np.ndarray = field(repr=False)


class Stages:
    """Logs each stage with its elapsed time, and reports progress to `report` if given."""

    def __init__(self, url: str, report: Callable[[dict], None] | None):
        self._url = url
        self._report = report or (lambda progress: None)
        self._started = time.monotonic()
        self._last = self._started

    def progress(self, stage: str, done: int, total: int) -> None:
        self._report({"stage": stage, "done": done, "total": total})

    def done(self, stage: str, **counts) -> None:
        now = time.monotonic()
        details = " ".join(f"{name}={value}" for name, value in counts.items())
        # The peak memory of this process (the one orchestrating) so far, for capacity planning.
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        log.info(
            "prepare %s: %s done in %.1fs (%.1fs in all, peak %.0f MiB) %s",
            *(self._url, stage, now - self._last, now - self._started, peak_mib, details),
        )
        self._last = now
        self._report({"stage": stage, "stagesDone": STAGES.index(stage) + 1})
