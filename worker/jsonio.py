"""The one JSON encoder: orjson, numpy aware, non-finite numbers as null; and answers joined
from parts encoded once, for bodies of tens of MB."""

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import orjson

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class Encoded:
    """JSON text encoded once: `dumps` returns it as it is, `joined_object` and `joined_array`
    join it without copying it more than once, and inside other values it is embedded as is.
    (Not a dataclass: orjson would write a dataclass's fields.)"""

    __slots__ = ("text",)

    def __init__(self, text: bytes):
        self.text = text


def _default(value: Any) -> Any:
    if isinstance(value, Encoded):
        return orjson.Fragment(value.text)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        # orjson serialises only C-contiguous arrays of its supported dtypes natively.
        return np.ascontiguousarray(value).tolist()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """JSON bytes of `value`; NaN and infinities become null (orjson's rule)."""
    if isinstance(value, Encoded):
        return value.text
    return orjson.dumps(value, default=_default, option=_OPTIONS)


def encoded(value: Any) -> Encoded:
    """`value` encoded once, to be embedded as it is in later answers."""
    return Encoded(dumps(value))


def joined_object(members: Mapping[str, Any]) -> Encoded:
    """The JSON object of `members`, each value encoded alone (as is if `Encoded`) and the
    parts joined once: orjson would grow its buffer, copying, around a large embedded part."""
    parts = [b"{"]
    for position, (key, value) in enumerate(members.items()):
        parts += [b"," if position else b"", dumps(key), b":", dumps(value)]
    parts.append(b"}")
    return Encoded(b"".join(parts))


def joined_array(items: Iterable[Any]) -> Encoded:
    """The JSON array of `items`, joined as `joined_object` joins."""
    return Encoded(b"[" + b",".join(dumps(item) for item in items) + b"]")


def loads(text: bytes | str) -> Any:
    return orjson.loads(text)
