"""Writing the store's large arrays: sparse matrices as contiguous 1-d zarr arrays cut in
shards, each shard written whole by exactly one writer."""

import numpy as np
import zarr
from zarr.codecs import BloscCodec

# Shards of 16 Mi elements (64 MB raw): few S3 objects, and what one writer holds (the ingest
# buffers a shard; an assembler of the gene-major copy builds one) stays small. Inner chunks
# of 1 Mi elements (4 MB raw) for the cell-major copy, which is read in long runs; 64 Ki
# elements for the gene-major copy, whose readers want one gene's slice and decode every
# chunk it touches.
CHUNK_ELEMENTS = 1 << 20
GENE_MAJOR_CHUNK_ELEMENTS = 1 << 16
SHARD_ELEMENTS = 16 << 20
COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")

SPARSE_DTYPES = {"data": np.float32, "indices": np.int32, "indptr": np.int64}

# The versions of anndata's on-disk encodings this store writes.
ENCODING_VERSIONS = {
    "anndata": "0.1.0",
    "dict": "0.1.0",
    "array": "0.2.0",
    "csr_matrix": "0.1.0",
    "csc_matrix": "0.1.0",
}


def element_attributes(encoding: str) -> dict[str, str]:
    """The attributes that make a zarr node an AnnData element of `encoding`."""
    return {"encoding-type": encoding, "encoding-version": ENCODING_VERSIONS[encoding]}


def create_sparse_group(
    parent: zarr.Group,
    name: str,
    encoding: str,
    shape: tuple[int, int],
    nnz: int,
    shard_elements: int = SHARD_ELEMENTS,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> zarr.Group:
    """An empty anndata sparse matrix group (`csr_matrix` or `csc_matrix`) of `nnz` entries."""
    group = parent.create_group(
        name,
        attributes={**element_attributes(encoding), "shape": list(shape)},
    )
    major = shape[0] if encoding == "csr_matrix" else shape[1]
    for array_name, length in (("data", nnz), ("indices", nnz), ("indptr", major + 1)):
        create_vector(
            group, array_name, length, SPARSE_DTYPES[array_name], shard_elements, chunk_elements
        )
    return group


def create_vector(
    group: zarr.Group,
    name: str,
    length: int,
    dtype,
    shard_elements: int = SHARD_ELEMENTS,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> zarr.Array:
    chunk = min(chunk_elements, shard_elements)
    return group.create_array(
        name,
        shape=(length,),
        dtype=dtype,
        chunks=(chunk,),
        shards=(shard_elements,),
        compressors=COMPRESSOR,
    )


class AppendingWriter:
    """Appends to 1-d arrays in order, writing whole shards and keeping the remainder.

    Each append is one row block's values; only full shards reach the store until `close`,
    so no shard is read back and rewritten. The arrays grow as they are written, so the
    length need not be known beforehand.
    """

    def __init__(self, arrays: list[zarr.Array]):
        self._arrays = arrays
        self._shard = arrays[0].shards[0]
        self._written = 0
        self._pending: list[list[np.ndarray]] = [[] for _ in arrays]
        self._pending_length = 0

    def append(self, *values: np.ndarray) -> None:
        for pending, value in zip(self._pending, values, strict=True):
            pending.append(value)
        self._pending_length += len(values[0])
        if self._pending_length >= self._shard:
            self._flush(whole_shards_only=True)

    def close(self) -> int:
        """Write what remains; returns the number of elements written."""
        self._flush(whole_shards_only=False)
        return self._written

    def _flush(self, *, whole_shards_only: bool) -> None:
        length = self._pending_length
        if whole_shards_only:
            length -= length % self._shard
        if length == 0:
            return
        for index, (array, pending) in enumerate(zip(self._arrays, self._pending, strict=True)):
            joined = np.concatenate(pending)
            array.resize((self._written + length,))
            array[self._written : self._written + length] = joined[:length]
            self._pending[index] = [joined[length:]]
        self._written += length
        self._pending_length -= length
