"""Cell sets: the JSON hierarchies stored per experiment in the cell sets bucket."""

from typing import Any

import numpy as np

from worker.errors import CellSetNotFound
from worker.jsonio import dumps, loads
from worker.settings import AwsSettings
from worker.store.experiment import filesystem


def _path(bucket: str, experiment_id: str, aws: AwsSettings):
    return filesystem(f"s3://{bucket}/{experiment_id}", aws)


def read_cell_sets(bucket: str, experiment_id: str, aws: AwsSettings) -> list[dict[str, Any]]:
    """The experiment's hierarchies, read afresh (the API may rewrite them at any time)."""
    fs, path = _path(bucket, experiment_id, aws)
    try:
        return loads(fs.cat_file(path))["cellSets"]
    except FileNotFoundError:
        return []


def write_cell_sets(
    bucket: str, experiment_id: str, aws: AwsSettings, hierarchies: list[dict[str, Any]]
) -> None:
    fs, path = _path(bucket, experiment_id, aws)
    fs.pipe_file(path, dumps({"cellSets": hierarchies}))


def replace_hierarchy(
    hierarchies: list[dict[str, Any]], hierarchy: dict[str, Any]
) -> list[dict[str, Any]]:
    """`hierarchies` with the one of the same key replaced by `hierarchy`, or it appended."""
    replaced = [hierarchy if node["key"] == hierarchy["key"] else node for node in hierarchies]
    if all(node["key"] != hierarchy["key"] for node in hierarchies):
        replaced.append(hierarchy)
    return replaced


def _find(nodes: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    for node in nodes:
        if node.get("key") == key:
            return node
        found = _find(node.get("children") or [], key)
        if found is not None:
            return found
    return None


def _cell_ids(node: dict[str, Any]) -> list[int]:
    ids = list(node.get("cellIds") or [])
    for child in node.get("children") or []:
        ids.extend(_cell_ids(child))
    return ids


def cell_set_ids(hierarchies: list[dict[str, Any]], key: str, n_cells: int) -> np.ndarray:
    """Sorted unique cell ids of the node `key` at any depth (a parent: its children's union)."""
    node = _find(hierarchies, key)
    if node is None:
        raise CellSetNotFound(f"cell set {key!r} does not exist")
    ids = np.unique(np.asarray(_cell_ids(node), dtype=np.int64))
    return ids[(ids >= 0) & (ids < n_cells)]


def parent_hierarchy(hierarchies: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The root hierarchy that holds the node `key`."""
    for root in hierarchies:
        if _find([root], key) is not None:
            return root
    raise CellSetNotFound(f"cell set {key!r} does not exist")


def cluster_hierarchy(
    key: str,
    name: str,
    labels: np.ndarray,
    child_keys: list[str] | None = None,
    child_names: list[str] | None = None,
) -> dict[str, Any]:
    """A hierarchy with one child per label value (0 first), by default `{key}-{i}` named
    `Cluster {i}`."""
    children = []
    n_children = len(child_keys) if child_keys else int(labels.max()) + 1 if len(labels) else 0
    for label in range(n_children):
        children.append(
            {
                "key": child_keys[label] if child_keys else f"{key}-{label}",
                "name": child_names[label] if child_names else f"Cluster {label}",
                "rootNode": False,
                "type": "cellSets",
                "color": PALETTE[label % len(PALETTE)],
                "cellIds": np.flatnonzero(labels == label).tolist(),
            }
        )
    return {"key": key, "name": name, "rootNode": True, "type": "cellSets", "children": children}


# Matplotlib's tab20: distinct colours the browser can show side by side.
PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
]  # fmt: skip
