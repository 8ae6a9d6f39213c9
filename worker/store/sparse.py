"""The one reader of slices of a stored sparse matrix (an AnnData `csr_matrix` or `csc_matrix`
group): whole rows of `X`, whole genes of `layers/counts_by_gene`."""

import asyncio
from functools import cached_property

import numpy as np
import zarr
from scipy import sparse
from zarr.core.sync import sync


class CompressedMatrix:
    """A stored CSR or CSC matrix, read by ranges of its major axis (rows of a CSR, columns of
    a CSC); every read of a call is issued at once, so on S3 the round trips overlap."""

    def __init__(self, group: zarr.Group):
        self.shape = tuple(group.attrs["shape"])
        self.by_row = group.attrs["encoding-type"] == "csr_matrix"
        self._indptr_array = group["indptr"]
        self._data = group["data"]
        self._indices = group["indices"]

    @cached_property
    def indptr(self) -> np.ndarray:
        """The whole indptr, read once (one small array for a CSC of genes)."""
        return self._indptr_array[:]

    def major_range(self, start: int, stop: int) -> sparse.csr_array | sparse.csc_array:
        """Majors `start:stop`, reading only their part of indptr."""
        indptr = self._indptr_array[start : stop + 1]
        first, last = int(indptr[0]), int(indptr[-1])
        data, indices = read_slices(
            [(self._data, slice(first, last)), (self._indices, slice(first, last))]
        )
        return self._matrix(data, indices, indptr - first, stop - start)

    def majors(self, positions: np.ndarray) -> sparse.csr_array | sparse.csc_array:
        """The majors at `positions`, in that order, from the cached indptr."""
        positions = np.asarray(positions, dtype=np.int64)
        starts, stops = self.indptr[positions], self.indptr[positions + 1]
        parts = [slice(int(start), int(stop)) for start, stop in zip(starts, stops, strict=True)]
        values = read_slices(
            [(self._data, part) for part in parts] + [(self._indices, part) for part in parts]
        )
        data, indices = values[: len(parts)], values[len(parts) :]
        return self._matrix(
            np.concatenate(data) if data else np.zeros(0, np.float32),
            np.concatenate(indices) if indices else np.zeros(0, np.int32),
            np.concatenate([[0], np.cumsum(stops - starts)]),
            len(positions),
        )

    def _matrix(self, data, indices, indptr, n_major: int):
        if self.by_row:
            return sparse.csr_array((data, indices, indptr), shape=(n_major, self.shape[1]))
        return sparse.csc_array((data, indices, indptr), shape=(self.shape[0], n_major))


def read_slices(reads: list[tuple[zarr.Array, slice]]) -> list[np.ndarray]:
    """Each (array, slice) read, all at once."""

    async def read_all():
        return await asyncio.gather(*(array._async_array.getitem(part) for array, part in reads))

    return sync(read_all())
