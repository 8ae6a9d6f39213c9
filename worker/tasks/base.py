"""What a task is: its body schema, whether its result is cacheable, and its compute function;
the context it computes in; and the schema parts several task bodies share."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from worker.settings import AwsSettings, Settings
from worker.store.cell_sets import CellSets, CellSetsLocation
from worker.store.experiment import ExperimentStore, open_experiment


class TaskBody(BaseModel):
    """What every task body has: its name. Task bodies extend this."""

    # Strict: a wrong JSON type (`"5"`, `true` for a number) is an error, not coerced.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
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

    @classmethod
    def for_experiment(cls, settings: Settings, experiment_id: str) -> "TaskContext":
        return cls(
            experiment_id=experiment_id,
            aws=settings.aws,
            store_root=settings.store_root,
            cell_sets_bucket=settings.cell_sets_bucket,
            source_buckets=settings.source_buckets,
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


@dataclass(frozen=True)
class Task:
    name: str
    body: type[TaskBody]
    cacheable: bool
    # Returns the result as a JSON-encodable value; raises a WorkerError for the client.
    compute: Callable[[TaskContext, Any], Any]
