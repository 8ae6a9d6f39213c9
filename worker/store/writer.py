"""Writing the store: sparse matrices as contiguous 1-d zarr arrays cut in shards, each shard
written whole by exactly one writer; and small elements staged in memory, uploaded at once."""

import asyncio
from collections.abc import AsyncIterator, Iterable

import numpy as np
import zarr
from zarr.abc.store import ByteRequest, Store
from zarr.codecs import BloscCodec
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import MemoryStore, WrapperStore

# Shards of 16 Mi elements (64 MB raw): few S3 objects, and what one writer holds (the ingest
# buffers a shard; an assembler of the gene-major copy builds one) stays small. Inner chunks
# of 1 Mi elements (4 MB raw) for the cell-major copy, which is read in long runs; 64 Ki
# elements for the gene-major copy, whose readers want one gene's slice and decode every
# chunk it touches.
CHUNK_ELEMENTS = 1 << 20
GENE_MAJOR_CHUNK_ELEMENTS = 1 << 16
SHARD_ELEMENTS = 16 << 20
COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
# A StagedStore keeps values up to this size in memory until it flushes (small arrays: uns,
# parameters, short obs and var columns); larger ones are written at once.
STAGED_VALUE_BYTES = 1 << 20
UPLOADS_AT_ONCE = 32

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


class StagedStore(WrapperStore):
    """A store whose metadata, and values up to `STAGED_VALUE_BYTES`, are written to memory
    and uploaded all at once by `flush`; larger values go straight through.

    Opening it lists the store once and reads every `zarr.json` at once; after that, the
    existence checks and metadata reads and writes that anndata's and zarr's writers make one
    after another (some 700 for obs, var, obsm, obsp, uns and the consolidation) cost no round
    trip. It assumes nothing else writes the store meanwhile.
    """

    def __init__(self, store: Store, staged_values: dict[str, Buffer], remote_keys: set[str]):
        super().__init__(store)
        self._staged_values = staged_values
        self._staged = MemoryStore(store_dict=staged_values)
        self._remote_keys = remote_keys
        self._pending: set[str] = set()

    @classmethod
    def over(cls, store: Store) -> "StagedStore":
        return sync(cls._open_over(store))

    @classmethod
    async def _open_over(cls, store: Store) -> "StagedStore":
        keys = {key async for key in store.list()}
        metadata = sorted(key for key in keys if _is_metadata(key))
        values = await asyncio.gather(
            *(store.get(key, default_buffer_prototype()) for key in metadata)
        )
        return cls(store, dict(zip(metadata, values, strict=True)), keys - set(metadata))

    def flush(self) -> None:
        """Upload what was staged since the last flush, at most `UPLOADS_AT_ONCE` at a time."""
        sync(self._flush())

    async def _flush(self) -> None:
        limit = asyncio.Semaphore(UPLOADS_AT_ONCE)

        async def upload(key: str) -> None:
            async with limit:
                await self._store.set(key, await self._staged.get(key, default_buffer_prototype()))

        pending = sorted(self._pending)
        await asyncio.gather(*(upload(key) for key in pending))
        for key in pending:
            if not _is_metadata(key):
                await self._staged.delete(key)
                self._remote_keys.add(key)
        self._pending.clear()

    def _with_store(self, store: Store) -> "StagedStore":
        raise NotImplementedError("a StagedStore wraps one store")

    def with_read_only(self, read_only: bool = False) -> "StagedStore":
        if read_only != self.read_only:
            raise NotImplementedError("a StagedStore keeps its store's read-only flag")
        return self

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if key in self._remote_keys:
            return await self._store.get(key, prototype, byte_range)
        return await self._staged.get(key, prototype, byte_range)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(
            await asyncio.gather(*(self.get(key, prototype, part) for key, part in key_ranges))
        )

    async def _get_many(self, requests):
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)

    async def exists(self, key: str) -> bool:
        return key in self._remote_keys or await self._staged.exists(key)

    async def set(self, key: str, value: Buffer) -> None:
        if _is_metadata(key) or len(value) <= STAGED_VALUE_BYTES:
            self._remote_keys.discard(key)
            await self._staged.set(key, value)
            self._pending.add(key)
        else:
            await self._staged.delete(key)
            self._pending.discard(key)
            await self._store.set(key, value)
            self._remote_keys.add(key)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        if not await self.exists(key):
            await self.set(key, value)

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        for key, value in values:
            await self.set(key, value)

    async def delete(self, key: str) -> None:
        await self._staged.delete(key)
        self._pending.discard(key)
        if key in self._remote_keys:
            await self._store.delete(key)
            self._remote_keys.discard(key)

    async def delete_dir(self, prefix: str) -> None:
        for key in [key async for key in self.list_prefix(prefix.rstrip("/") + "/")]:
            await self.delete(key)

    async def is_empty(self, prefix: str) -> bool:
        return not any(True async for _ in self.list_prefix(prefix))

    def _keys(self) -> "set[str]":
        return self._remote_keys | set(self._staged_values)

    async def list(self) -> AsyncIterator[str]:
        for key in sorted(self._keys()):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in sorted(self._keys()):
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/")
        below = (
            self._keys()
            if prefix == ""
            else {
                key.removeprefix(f"{prefix}/")
                for key in self._keys()
                if key.startswith(f"{prefix}/")
            }
        )
        for name in sorted({key.split("/")[0] for key in below}):
            yield name


def _is_metadata(key: str) -> bool:
    return key == "zarr.json" or key.endswith("/zarr.json")
