"""ClusterCells: Louvain or Leiden clusters of the stored neighbour graph, saved as a cell set
hierarchy that replaces the one of the same key."""

from typing import Any, Literal

import numpy as np
from anndata.io import read_elem
from pydantic import BaseModel, ConfigDict, Field

from worker.compute.graph import ClusterMethod, cluster
from worker.errors import InvalidRequest
from worker.messages import TaskBody
from worker.store.build import BuildOptions
from worker.store.cell_sets import (
    cluster_hierarchy,
    read_cell_sets,
    replace_hierarchy,
    write_cell_sets,
)
from worker.store.experiment import open_experiment
from worker.tasks.base import Task, TaskContext


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)
    resolution: float = Field(default=0.8, ge=0, le=2)


class ClusterCellsBody(TaskBody):
    name: Literal["ClusterCells"]
    type: ClusterMethod
    cellSetKey: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    cellSetName: str = Field(min_length=1, max_length=200)
    config: ClusterConfig = Field(default_factory=ClusterConfig)


def cluster_cells(context: TaskContext, body: ClusterCellsBody) -> dict[str, Any]:
    store = open_experiment(context.store_root, context.experiment_id, context.aws)
    connectivities = read_elem(store.group["obsp/connectivities"])
    n_cells = connectivities.shape[0]
    if n_cells < BuildOptions.min_cells_for_graph:
        # No graph is stored for so few cells: one cluster, as PrepareExperiment makes.
        labels = np.zeros(n_cells, dtype=np.int64)
    else:
        parameters = read_elem(store.group["uns/worker/parameters"])
        labels = cluster(
            connectivities,
            method=body.type,
            resolution=body.config.resolution,
            random_state=int(parameters["random_state"]),
        )
    hierarchy = cluster_hierarchy(body.cellSetKey, body.cellSetName, labels)
    hierarchies = read_cell_sets(context.cell_sets_bucket, context.experiment_id, context.aws)
    others = [root for root in hierarchies if root["key"] != body.cellSetKey]
    clashes = _node_keys([hierarchy]) & _node_keys(others)
    if clashes:
        raise InvalidRequest(
            f"invalid request: body.cellSetKey: the clusters of {body.cellSetKey!r} would reuse "
            f"the keys of other cell sets: {', '.join(sorted(clashes)[:10])}"
        )
    write_cell_sets(
        context.cell_sets_bucket,
        context.experiment_id,
        context.aws,
        replace_hierarchy(hierarchies, hierarchy),
    )
    return hierarchy


def _node_keys(nodes: list[dict[str, Any]]) -> set[str]:
    """The keys of `nodes` and of all their descendants."""
    keys = set()
    for node in nodes:
        keys.add(node["key"])
        keys |= _node_keys(node.get("children") or [])
    return keys


TASK = Task(name="ClusterCells", body=ClusterCellsBody, cacheable=False, compute=cluster_cells)
