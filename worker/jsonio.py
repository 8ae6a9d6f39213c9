"""The one JSON encoder: orjson, numpy aware, non-finite numbers as null."""

from typing import Any

import numpy as np
import orjson

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        # orjson serialises only C-contiguous arrays of its supported dtypes natively.
        return np.ascontiguousarray(value).tolist()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """JSON bytes of `value`; NaN and infinities become null (orjson's rule)."""
    return orjson.dumps(value, default=_default, option=_OPTIONS)


def encoded(value: Any) -> orjson.Fragment:
    """`value` encoded once, to be embedded as it is in later `dumps` calls."""
    return orjson.Fragment(dumps(value))


def loads(text: bytes | str) -> Any:
    return orjson.loads(text)
