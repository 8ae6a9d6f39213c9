"""What a task is: its body schema, whether its result is cacheable, and its compute function;
the context it computes in; and the schema parts several task bodies share."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from distributed import get_worker
from pydantic import BaseModel, ConfigDict, Field

from worker.settings import AwsSettings, Settings
from worker.store.cell_sets import CellSets, CellSetsLocation, PlatformApi, change_cell_sets
from worker.store.experiment import ExperimentStore, open_experiment
from worker.store.result_file import ResultFile


class TaskBody(BaseModel):
    """What every task body has: its name. Task bodies extend this."""

    # Strict: a wrong JSON type (`"5"`, `true` for a number) is an error, not coerced.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    name: str


class V2TaskBody(BaseModel):
    """What every Cellenics v2 task body has. The platform's API lets fields its schemas do not
    name through (the UI adds `experimentId`, `clusterNames`...), so they are ignored; types
    are checked as its validator checks them (JSON types, not Python's strictness)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    name: str


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True, frozen=True)
    resolution: float = Field(default=0.8, ge=0, le=2)


ClusterMethod = Literal["louvain", "leiden"]


@dataclass(frozen=True)
class TaskContext:
    """Everything a task needs besides its body; travels with the task to a Dask worker."""

    experiment_id: str
    aws: AwsSettings
    store_root: str
    cell_sets_bucket: str
    source_buckets: tuple[str, ...]
    # Where cell set changes go when the platform's API owns them (Cellenics v2), else None.
    api: PlatformApi | None = None
    # The Dask event topic the request's progress is reported on, if anyone listens.
    progress_topic: str | None = None
    # Where a task that writes its result as a file writes it, as the protocol says.
    result_file: ResultFile | None = None
    # The Cellenics v2 results bucket, where results of earlier requests are read back.
    v2_results_bucket: str = ""
    # ScTypeAnnotate's marker database (WORKER_SCTYPE_DB), if configured.
    sctype_db: str | None = None

    @classmethod
    def for_experiment(
        cls,
        settings: Settings,
        experiment_id: str,
        *,
        api: PlatformApi | None = None,
        progress_topic: str | None = None,
        result_file: ResultFile | None = None,
    ) -> "TaskContext":
        return cls(
            experiment_id=experiment_id,
            aws=settings.aws,
            store_root=settings.store_root,
            cell_sets_bucket=settings.cell_sets_bucket,
            source_buckets=settings.source_buckets,
            api=api,
            progress_topic=progress_topic,
            result_file=result_file,
            v2_results_bucket=settings.v2_results_bucket,
            sctype_db=settings.sctype_db,
        )

    def store(self) -> ExperimentStore:
        """The experiment's current store version (raises ExperimentNotFound)."""
        return open_experiment(self.store_root, self.experiment_id, self.aws)

    @property
    def cell_sets_location(self) -> CellSetsLocation:
        return CellSetsLocation(self.cell_sets_bucket, self.experiment_id, self.aws)

    def cell_sets(self) -> CellSets:
        """The experiment's cell sets, read afresh (the API may rewrite them at any time)."""
        return CellSets.read(self.cell_sets_location)

    def change_cell_sets(self, operations: list[dict[str, Any]]) -> None:
        """Apply json-merger operations to the cell sets, through the API when there is one."""
        change_cell_sets(self.cell_sets_location, self.api, operations)

    def report_progress(self, done: int, total: int, message: str = "") -> None:
        """Tell whoever waits for this request how far it is (shown in the browser and on the
        Dask dashboard's event log); nothing when nobody listens or outside a Dask worker."""
        if self.progress_topic is None:
            return
        try:
            worker = get_worker()
        except ValueError:
            return
        worker.log_event(self.progress_topic, {"done": done, "total": total, "message": message})


@dataclass(frozen=True)
class Task:
    name: str
    body: type[TaskBody]
    cacheable: bool
    # Returns the result as a JSON-encodable value; raises a WorkerError for the client.
    compute: Callable[[TaskContext, Any], Any]
    # The task writes its result itself, as a file at `context.result_file` (a protocol that
    # offers it answers with where the file is), and returns the number of bytes written.
    writes_result_file: bool = False
