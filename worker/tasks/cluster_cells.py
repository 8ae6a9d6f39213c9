"""ClusterCells: Louvain or Leiden clusters of the stored neighbour graph, saved as a cell set
hierarchy that replaces the one of the same key (Cellenics v2: always the `louvain` one)."""

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from worker.compute.graph import MIN_CELLS_FOR_GRAPH, cluster
from worker.errors import InvalidRequest
from worker.store.cell_sets import CellSets, cluster_hierarchy, update_cell_sets
from worker.tasks.base import (
    ClusterConfig,
    ClusterMethod,
    Task,
    TaskBody,
    TaskContext,
    V2TaskBody,
)


class ClusterCellsBody(TaskBody):
    name: Literal["ClusterCells"]
    type: ClusterMethod
    cellSetKey: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    cellSetName: str = Field(min_length=1, max_length=200)
    config: ClusterConfig = Field(default_factory=ClusterConfig)


def cluster_labels(context: TaskContext, method: ClusterMethod, resolution: float) -> np.ndarray:
    """Each cell's cluster, the largest cluster 0."""
    store = context.store()
    if store.n_cells < MIN_CELLS_FOR_GRAPH:
        # No graph is stored for so few cells: one cluster, as PrepareExperiment makes.
        return np.zeros(store.n_cells, dtype=np.int64)
    return cluster(
        store.connectivities(),
        method=method,
        resolution=resolution,
        random_state=store.parameters.random_state,
    )


def cluster_cells(context: TaskContext, body: ClusterCellsBody) -> dict[str, Any]:
    labels = cluster_labels(context, body.type, body.config.resolution)
    hierarchy = cluster_hierarchy(body.cellSetKey, body.cellSetName, labels)

    def replaced(current: CellSets) -> list[dict[str, Any]]:
        others = CellSets([root for root in current.hierarchies if root["key"] != body.cellSetKey])
        clashes = CellSets([hierarchy]).keys() & others.keys()
        if clashes:
            raise InvalidRequest(
                f"invalid request: body.cellSetKey: the clusters of {body.cellSetKey!r} would "
                f"reuse the keys of other cell sets: {', '.join(sorted(clashes)[:10])}"
            )
        return current.with_hierarchy(hierarchy)

    update_cell_sets(context.cell_sets_location, replaced)
    return hierarchy


TASK = Task(name="ClusterCells", body=ClusterCellsBody, cacheable=False, compute=cluster_cells)


class ClusterV2Config(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, frozen=True)
    resolution: float = Field(ge=0, le=10)


class ClusterCellsV2Body(V2TaskBody):
    name: Literal["ClusterCells"]
    type: ClusterMethod
    config: ClusterV2Config
    # Sent by the UI ("louvain", "Louvain clusters") and ignored, as the platform's worker
    # ignores them: the class is always `louvain`, named after the method.
    cellSetKey: str | None = None
    cellSetName: str | None = None


# The class the platform's UI shows as the clusters, whichever method made them.
CLUSTERS_KEY = "louvain"


def cluster_cells_v2(context: TaskContext, body: ClusterCellsV2Body) -> dict[str, Any]:
    """The clusters replace the `louvain` class, first among the classes, through the
    platform's API (its R worker's PATCH); the answer is each cell's cluster, columnar."""
    labels = cluster_labels(context, body.type, body.config.resolution)
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    hierarchy = cluster_hierarchy(
        CLUSTERS_KEY,
        f"{body.type} clusters",
        labels,
        child_keys=[f"{body.type}-{label}" for label in range(n_clusters)],
    )
    context.change_cell_sets(
        [
            {
                "$match": {
                    "query": f'$[?(@.key == "{CLUSTERS_KEY}")]',
                    "value": {"$remove": True},
                }
            },
            {"$prepend": hierarchy},
        ]
    )
    return {"cluster": labels.astype(str), "cell_ids": np.arange(len(labels))}


V2_TASK = Task(
    name="ClusterCells", body=ClusterCellsV2Body, cacheable=False, compute=cluster_cells_v2
)
