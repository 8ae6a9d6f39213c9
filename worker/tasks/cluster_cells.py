"""ClusterCells: Louvain or Leiden clusters of the stored neighbour graph, saved as a cell set
hierarchy that replaces the one of the same key."""

from typing import Any, Literal

import numpy as np
from pydantic import Field

from worker.compute.graph import MIN_CELLS_FOR_GRAPH, cluster
from worker.errors import InvalidRequest
from worker.store.cell_sets import CellSets, cluster_hierarchy, update_cell_sets
from worker.tasks.base import ClusterConfig, ClusterMethod, Task, TaskBody, TaskContext


class ClusterCellsBody(TaskBody):
    name: Literal["ClusterCells"]
    type: ClusterMethod
    cellSetKey: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    cellSetName: str = Field(min_length=1, max_length=200)
    config: ClusterConfig = Field(default_factory=ClusterConfig)


def cluster_cells(context: TaskContext, body: ClusterCellsBody) -> dict[str, Any]:
    store = context.store()
    if store.n_cells < MIN_CELLS_FOR_GRAPH:
        # No graph is stored for so few cells: one cluster, as PrepareExperiment makes.
        labels = np.zeros(store.n_cells, dtype=np.int64)
    else:
        labels = cluster(
            store.connectivities(),
            method=body.type,
            resolution=body.config.resolution,
            random_state=store.parameters.random_state,
        )
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
