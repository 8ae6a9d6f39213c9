"""The computations over the store's arrays."""

from worker.compute.numba_cache import cache_compiled_code

cache_compiled_code()
