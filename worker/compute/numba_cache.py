"""numba's compiled code kept on disk for every function jitted after this module is imported,
ours and our dependencies'.

pynndescent and umap-learn jit their functions without `cache=True`, so every new process (each
Dask worker, each `python -m worker`, each test process) compiled them again before its first
neighbour graph: about 12 s of CPU at 5,000 cells, 26-49 s at a million. With `cache=True` made
the default, the first process writes them to numba's cache (`NUMBA_CACHE_DIR`) and the others
load them (0.2-2 s). numba keys each entry by the source file, the signature and the CPU, so a
changed package or machine compiles again rather than loading stale code. Both libraries call
`numba.njit`/`numba.jit` through the module at decoration time, so replacing the two decorators
before they are first imported (scanpy imports them lazily) reaches all of their functions.
"""

import functools
from collections.abc import Callable

import numba


def _cached_by_default(decorator: Callable) -> Callable:
    @functools.wraps(decorator)
    def decorate(*args, **kwargs):
        kwargs.setdefault("cache", True)
        return decorator(*args, **kwargs)

    decorate.caches_by_default = True
    return decorate


def cache_compiled_code() -> None:
    """Make `cache=True` the default of `numba.njit` and `numba.jit` in this process."""
    if not getattr(numba.njit, "caches_by_default", False):
        numba.njit = _cached_by_default(numba.njit)
        numba.jit = _cached_by_default(numba.jit)
