"""Cell sets: the JSON hierarchies stored per experiment in the cell sets bucket, read with their
ETag and written only over the version read (S3 conditional writes), so that two writers never
lose each other's update; or changed through the platform's API, which owns them in Cellenics
v2, by a PATCH of json-merger operations."""

import copy
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError

from worker.errors import CellSetNotFound, ConcurrentUpdate, TransportError
from worker.jsonio import dumps, loads
from worker.settings import AwsSettings
from worker.transport.aws import error_code, shared_client, transport_error

log = logging.getLogger(__name__)

# S3 answers a write whose condition no longer holds with 412, or 409 when another conditional
# write to the key is in progress.
LOST_RACE = {"PreconditionFailed", "ConditionalRequestConflict"}
WRITE_ATTEMPTS = 8


@dataclass(frozen=True)
class CellSetsLocation:
    bucket: str
    experiment_id: str
    aws: AwsSettings


class CellSets:
    """An experiment's cell set hierarchies as read, with the ETag of what was read."""

    def __init__(self, hierarchies: list[dict[str, Any]], etag: str | None = None):
        self.hierarchies = hierarchies
        self.etag = etag

    @classmethod
    def read(cls, location: CellSetsLocation) -> "CellSets":
        s3 = shared_client("s3", location.aws)
        try:
            reply = s3.get_object(Bucket=location.bucket, Key=location.experiment_id)
            encoded = reply["Body"].read()
        except ClientError as error:
            if error_code(error) == "NoSuchKey":
                return cls([], None)
            raise transport_error("s3", "GetObject", error) from error
        except BotoCoreError as error:
            raise transport_error("s3", "GetObject", error) from error
        return cls(loads(encoded)["cellSets"], reply["ETag"])

    def node(self, key: str) -> dict[str, Any]:
        """The node `key` at any depth; raises CellSetNotFound."""
        node = _find(self.hierarchies, key)
        if node is None:
            raise CellSetNotFound(f"cell set {key!r} does not exist")
        return node

    def hierarchy(self, key: str) -> dict[str, Any]:
        """The root hierarchy `key`; raises CellSetNotFound."""
        root = next((root for root in self.hierarchies if root.get("key") == key), None)
        if root is None:
            raise CellSetNotFound(f"cell set hierarchy {key!r} does not exist")
        return root

    def parent(self, key: str) -> dict[str, Any]:
        """The root hierarchy that holds the node `key`."""
        for root in self.hierarchies:
            if _find([root], key) is not None:
                return root
        raise CellSetNotFound(f"cell set {key!r} does not exist")

    def siblings(self, key: str) -> list[dict[str, Any]]:
        """The other children of the node that holds `key`; a root hierarchy has none."""
        self.node(key)
        parent = _parent_of(self.hierarchies, key)
        children = [] if parent is None else parent.get("children") or []
        return [node for node in children if node.get("key") != key]

    def ids(self, key: str, n_cells: int) -> np.ndarray:
        """Sorted unique cell ids of the node `key` (a parent: its children's union)."""
        ids = np.unique(np.asarray(_cell_ids(self.node(key)), dtype=np.int64))
        return ids[(ids >= 0) & (ids < n_cells)]

    def mask(self, key: str, n_cells: int) -> np.ndarray:
        in_set = np.zeros(n_cells, dtype=bool)
        in_set[self.ids(key, n_cells)] = True
        return in_set

    def union_mask(self, keys: list[str], n_cells: int) -> np.ndarray:
        """The cells of any of the nodes `keys` (a parent: its children's)."""
        in_union = np.zeros(n_cells, dtype=bool)
        for key in keys:
            in_union[self.ids(key, n_cells)] = True
        return in_union

    def siblings_mask(self, key: str, n_cells: int) -> np.ndarray:
        """The cells of the sets beside `key` in its hierarchy."""
        in_siblings = np.zeros(n_cells, dtype=bool)
        for sibling in self.siblings(key):
            ids = np.asarray(_cell_ids(sibling), dtype=np.int64)
            in_siblings[ids[(ids >= 0) & (ids < n_cells)]] = True
        return in_siblings

    def keys(self) -> set[str]:
        """The keys of every node."""
        return _keys(self.hierarchies)

    def with_hierarchy(self, hierarchy: dict[str, Any]) -> list[dict[str, Any]]:
        """The hierarchies with the one of the same key replaced by `hierarchy`, or it added."""
        replaced = [
            hierarchy if node["key"] == hierarchy["key"] else node for node in self.hierarchies
        ]
        if all(node["key"] != hierarchy["key"] for node in self.hierarchies):
            replaced.append(hierarchy)
        return replaced


def update_cell_sets(
    location: CellSetsLocation, change: Callable[[CellSets], list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Write `change(current)` over the current cell sets, only if nobody wrote them since they
    were read; on a lost race, read again and apply `change` again. Returns what was written."""
    s3 = shared_client("s3", location.aws)
    for _attempt in range(WRITE_ATTEMPTS):
        current = CellSets.read(location)
        hierarchies = change(current)
        condition = {"IfMatch": current.etag} if current.etag else {"IfNoneMatch": "*"}
        try:
            s3.put_object(
                Bucket=location.bucket,
                Key=location.experiment_id,
                Body=dumps({"cellSets": hierarchies}),
                ContentType="application/json",
                **condition,
            )
            return hierarchies
        except BotoCoreError as error:
            raise transport_error("s3", "PutObject", error) from error
        except ClientError as error:
            if error_code(error) not in LOST_RACE:
                raise transport_error("s3", "PutObject", error) from error
            log.info("cell sets of %s changed while updating them; again", location.experiment_id)
    raise ConcurrentUpdate(
        f"the cell sets of {location.experiment_id} kept changing; gave up after "
        f"{WRITE_ATTEMPTS} attempts"
    )


def _find(nodes: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    for node in nodes:
        if node.get("key") == key:
            return node
        found = _find(node.get("children") or [], key)
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class PlatformApi:
    """The platform's API, which applies cell set changes for a Cellenics v2 request with the
    user's authorization."""

    url: str
    authorization: str | None


MERGER_CONTENT_TYPE = "application/boschni-json-merger+json"
API_TIMEOUT_S = 30


def change_cell_sets(
    location: CellSetsLocation, api: PlatformApi | None, operations: list[dict[str, Any]]
) -> None:
    """Apply json-merger `operations` to the experiment's cell sets: through the platform's API
    when there is one (`PATCH {api}/v2/experiments/{id}/cellSets`, as the platform's R worker
    sends it), else directly to the stored object, conditionally."""
    if api is None:
        update_cell_sets(
            location, lambda current: apply_merger_patch(current.hierarchies, operations)
        )
        return
    request = urllib.request.Request(
        f"{api.url.rstrip('/')}/v2/experiments/{location.experiment_id}/cellSets",
        data=dumps(operations),
        method="PATCH",
        headers={"Content-Type": MERGER_CONTENT_TYPE}
        | ({"Authorization": api.authorization} if api.authorization else {}),
    )
    try:
        with urllib.request.urlopen(request, timeout=API_TIMEOUT_S) as reply:
            reply.read()
    except urllib.error.HTTPError as error:
        detail = error.read()[:500].decode(errors="replace")
        raise TransportError("api", "PATCH cellSets", f"HTTP {error.code}: {detail}") from error
    except OSError as error:
        raise TransportError("api", "PATCH cellSets", str(error)) from error


# The only query the platform's workers send: the first element whose key is K.
MATCH_KEY = re.compile(r"""^\$\[\?\(@\.key ?== ?(["'])(?P<key>.*)\1\)\]$""")


def apply_merger_patch(
    hierarchies: list[dict[str, Any]], operations: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`hierarchies` changed by json-merger `operations`, the subset the platform uses:
    `{"$match": {"query": '$[?(@.key == "K")]', "value": V}}` (no match: nothing), where V is
    `{"$remove": true}` or an object merged into the match (lists item by item, where an item
    `{"$insert": {"index": "-" | i, "value": X}}` inserts X); `{"$prepend": X}`; `{"$append": X}`.
    Raises ValueError on anything else."""
    result = copy.deepcopy(hierarchies)
    for operation in operations:
        if not isinstance(operation, dict) or len(operation) != 1:
            raise ValueError(f"not a json-merger operation: {str(operation)[:200]}")
        ((command, argument),) = operation.items()
        if command == "$prepend":
            result.insert(0, copy.deepcopy(argument))
        elif command == "$append":
            result.append(copy.deepcopy(argument))
        elif command == "$match":
            found = MATCH_KEY.match(str(argument.get("query", "")))
            if found is None:
                raise ValueError(f"unsupported $match query {str(argument.get('query'))[:200]!r}")
            index = next(
                (i for i, node in enumerate(result) if node.get("key") == found["key"]), None
            )
            if index is None:
                continue
            value = argument.get("value")
            if value == {"$remove": True}:
                del result[index]
            else:
                result[index] = _merged(result[index], value)
        else:
            raise ValueError(f"unsupported json-merger operation {command!r}")
    return result


def _merged(target: Any, source: Any) -> Any:
    if isinstance(source, dict) and isinstance(target, dict):
        merged = dict(target)
        for key, value in source.items():
            merged[key] = _merged(target.get(key), value)
        return merged
    if isinstance(source, list) and isinstance(target, list):
        merged = list(target)
        for position, item in enumerate(source):
            if isinstance(item, dict) and set(item) == {"$insert"}:
                insert = item["$insert"]
                at = len(merged) if insert.get("index") == "-" else int(insert["index"])
                merged.insert(at, copy.deepcopy(insert["value"]))
            elif position < len(merged):
                merged[position] = _merged(merged[position], item)
            else:
                merged.append(copy.deepcopy(item))
        return merged
    return copy.deepcopy(source)


def _parent_of(nodes: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    for node in nodes:
        children = node.get("children") or []
        if any(child.get("key") == key for child in children):
            return node
        found = _parent_of(children, key)
        if found is not None:
            return found
    return None


def _cell_ids(node: dict[str, Any]) -> list[int]:
    ids = list(node.get("cellIds") or [])
    for child in node.get("children") or []:
        ids.extend(_cell_ids(child))
    return ids


def _keys(nodes: list[dict[str, Any]]) -> set[str]:
    keys = set()
    for node in nodes:
        keys.add(node["key"])
        keys |= _keys(node.get("children") or [])
    return keys


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
