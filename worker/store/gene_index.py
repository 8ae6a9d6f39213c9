"""Gene positions by display name (`var["gene_names"]`), built once per opened store: exact, and
ignoring case, as the Cellenics v2 tasks match the names they are sent; and the platform's gene
name filter."""

import re
import weakref

import numpy as np

from worker.errors import InvalidRequest
from worker.store.experiment import ExperimentStore

# What the platform's Python front removes from a gene name filter before its R worker greps with
# it.
STRIPPED_FROM_FILTER = re.compile(r"[{}|()?¿*+/.<>]")

_exact: "weakref.WeakKeyDictionary[ExperimentStore, dict[str, int]]" = weakref.WeakKeyDictionary()
_upper: "weakref.WeakKeyDictionary[ExperimentStore, dict[str, list[int]]]" = (
    weakref.WeakKeyDictionary()
)


def positions_by_name(store: ExperimentStore) -> dict[str, int]:
    """Each gene name's position (the first gene of that name)."""
    lookup = _exact.get(store)
    if lookup is None:
        names = store.var["gene_names"].astype(str).tolist()
        lookup = {name: position for position, name in reversed(list(enumerate(names)))}
        _exact[store] = lookup
    return lookup


def positions_by_upper_name(store: ExperimentStore) -> dict[str, list[int]]:
    """Each upper-cased gene name's positions, ascending."""
    lookup = _upper.get(store)
    if lookup is None:
        lookup = {}
        for position, name in enumerate(store.var["gene_names"].astype(str)):
            lookup.setdefault(name.upper(), []).append(position)
        _upper[store] = lookup
    return lookup


def matching_ignoring_case(store: ExperimentStore, names: list[str]) -> np.ndarray:
    """Ascending positions of every gene whose name equals one of `names` ignoring case."""
    lookup = positions_by_upper_name(store)
    found = {position for name in names for position in lookup.get(name.upper(), ())}
    return np.array(sorted(found), dtype=np.int64)


def name_filter(expression: str, field: str) -> re.Pattern:
    """The platform's gene name filter: `expression` without the characters its Python front
    strips, as a case-insensitive regular expression (searched for, not matched whole);
    InvalidRequest naming the request's `field` when it is not one."""
    try:
        return re.compile(STRIPPED_FROM_FILTER.sub("", expression), re.IGNORECASE)
    except re.error as error:
        raise InvalidRequest(
            f"invalid request: {field}: not a regular expression: {error}"
        ) from None
