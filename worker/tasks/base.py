"""What a task is: its body schema, whether its result is cacheable, and its compute function."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.messages import TaskBody
from worker.settings import AwsSettings, Settings


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


@dataclass(frozen=True)
class Task:
    name: str
    body: type[TaskBody]
    cacheable: bool
    # Returns the result as a JSON-encodable value; raises a WorkerError for the client.
    compute: Callable[[TaskContext, Any], Any]
