"""The one reader of slices of a stored sparse matrix (an AnnData `csr_matrix` or `csc_matrix`
group): whole rows of `X`, whole genes of `layers/counts_by_gene`.

On S3 every request costs a round trip before its first byte, so the 1-d arrays are read as
`ShardedVector`s rather than through zarr's indexing, which reads a shard's index and then each
chunk of it one after another: here the shard indexes of an opened array are kept, the chunks a
read needs in one shard are fetched in as few ranged GETs as their layout allows, and every GET
of a call is issued at once. A warm read of any slices is then one round trip.
"""

import asyncio
from collections import Counter
from functools import cached_property

import numpy as np
import zarr
from numcodecs import blosc
from scipy import sparse
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.codecs import BloscCodec, BytesCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

# Chunks of one shard closer than this are fetched in one GET: on S3 transferring this many
# bytes costs less than a request's latency.
COALESCE_GAP_BYTES = 1 << 20
# A shard index entry of a chunk that was never written (all fill value).
_EMPTY = np.uint64(2**64 - 1)


class ShardedVector:
    """A 1-d zarr array of sharded chunks, written by `worker.store.writer` (little-endian
    values, blosc inside each chunk, the index at the shard's end), read by element ranges.

    An array of another layout is read through zarr.
    """

    def __init__(self, array: zarr.Array):
        self.array = array
        self.length = array.shape[0]
        self.dtype = array.dtype
        codec = array.metadata.codecs[0] if len(array.metadata.codecs) == 1 else None
        self._direct = (
            isinstance(codec, ShardingCodec)
            and codec.index_location == ShardingCodecIndexLocation.end
            and len(codec.codecs) == 2
            and isinstance(codec.codecs[0], BytesCodec)
            and (codec.codecs[0].endian is None or codec.codecs[0].endian.value == "little")
            and isinstance(codec.codecs[1], BloscCodec)
            and array.metadata.fill_value == 0
        )
        if self._direct:
            self._shard_elements = array.shards[0]
            self._chunk_elements = codec.chunk_shape[0]
            self._chunks_per_shard = self._shard_elements // self._chunk_elements
            # offset and length of each chunk (uint64 each), then a crc32c of them
            self._index_bytes = 16 * self._chunks_per_shard + 4
            self._store = array.store_path.store
            self._prefix = f"{array.store_path.path}/" if array.store_path.path else ""
        self._indexes: dict[int, np.ndarray | None] = {}

    async def read(self, parts: list[slice]) -> list[np.ndarray]:
        """The values of each slice (start and stop within the array, step 1)."""
        if not self._direct:
            return await asyncio.gather(*(self.array._async_array.getitem(part) for part in parts))
        size = self._chunk_elements

        def chunks_of(part: slice) -> range:
            return range(part.start // size, -(-part.stop // size) if part.stop > part.start else 0)

        uses = Counter(chunk for part in parts for chunk in chunks_of(part))
        encoded = await self._encoded_chunks(sorted(uses))
        # Chunks that several slices share (neighbouring genes) are decoded once.
        decoded: dict[int, np.ndarray] = {}
        values = []
        for part in parts:
            out = np.empty(max(part.stop - part.start, 0), self.dtype)
            for chunk in chunks_of(part):
                chunk_start = chunk * size
                low, high = max(part.start, chunk_start), min(part.stop, chunk_start + size)
                target = out[low - part.start : high - part.start]
                if encoded[chunk] is None:
                    target[:] = 0
                elif high - low == size and uses[chunk] == 1:
                    blosc.decompress(encoded[chunk], target)
                else:
                    if chunk not in decoded:
                        raw = blosc.decompress(encoded[chunk])
                        decoded[chunk] = np.frombuffer(raw, self.dtype)
                    target[:] = decoded[chunk][low - chunk_start : high - chunk_start]
            values.append(out)
        return values

    async def _encoded_chunks(self, chunks: list[int]) -> dict[int, memoryview | None]:
        """The encoded bytes of the given chunks (numbered across the array), None for a chunk
        never written (all zeros): shard indexes first unless held, then one GET per run of
        nearby chunks in a shard, all at once."""
        by_shard: dict[int, list[int]] = {}
        for chunk in chunks:
            by_shard.setdefault(chunk // self._chunks_per_shard, []).append(chunk)
        missing = [shard for shard in by_shard if shard not in self._indexes]
        indexes = await asyncio.gather(*(self._read_index(shard) for shard in missing))
        self._indexes.update(zip(missing, indexes, strict=True))
        encoded: dict[int, memoryview | None] = {}
        runs = []  # [shard, first byte, end byte, [(chunk, offset, length), ...]]
        for shard, shard_chunks in by_shard.items():
            index = self._indexes[shard]
            present = []
            for chunk in shard_chunks:
                offset, length = (
                    (_EMPTY, _EMPTY) if index is None else index[chunk % self._chunks_per_shard]
                )
                if offset == _EMPTY:
                    encoded[chunk] = None
                else:
                    present.append((chunk, int(offset), int(length)))
            for chunk, offset, length in sorted(present, key=lambda entry: entry[1]):
                run = runs[-1] if runs and runs[-1][0] == shard else None
                if run is not None and offset - run[2] <= COALESCE_GAP_BYTES:
                    run[2] = max(run[2], offset + length)
                    run[3].append((chunk, offset, length))
                else:
                    runs.append([shard, offset, offset + length, [(chunk, offset, length)]])
        fetched = await asyncio.gather(
            *(self._get(shard, RangeByteRequest(first, end)) for shard, first, end, _ in runs)
        )
        for (_, first, _, members), raw in zip(runs, fetched, strict=True):
            view = memoryview(raw)
            for chunk, offset, length in members:
                encoded[chunk] = view[offset - first : offset - first + length]
        return encoded

    async def _read_index(self, shard: int) -> np.ndarray | None:
        """Offset and length of each chunk of a shard; None for a shard never written."""
        raw = await self._get(shard, SuffixByteRequest(self._index_bytes), missing_ok=True)
        if raw is None:
            return None
        return np.frombuffer(raw[:-4], dtype="<u8").reshape(self._chunks_per_shard, 2)

    async def _get(self, shard: int, byte_range, missing_ok: bool = False) -> bytes | None:
        key = self._prefix + self.array.metadata.encode_chunk_key((shard,))
        buffer = await self._store.get(key, default_buffer_prototype(), byte_range)
        if buffer is None:
            if missing_ok:
                return None
            raise FileNotFoundError(f"{key} is missing from the store")
        return buffer.to_bytes()


class CompressedMatrix:
    """A stored CSR or CSC matrix, read by ranges of its major axis (rows of a CSR, columns of
    a CSC); every read of a call is issued at once, so on S3 the round trips overlap."""

    def __init__(self, group: zarr.Group):
        self.shape = tuple(group.attrs["shape"])
        self.by_row = group.attrs["encoding-type"] == "csr_matrix"
        self._indptr_array = ShardedVector(group["indptr"])
        self._data = ShardedVector(group["data"])
        self._indices = ShardedVector(group["indices"])

    @cached_property
    def indptr(self) -> np.ndarray:
        """The whole indptr, read once (one small array for a CSC of genes)."""
        (indptr,) = read_slices([(self._indptr_array, slice(0, self._indptr_array.length))])
        return indptr

    def major_range(
        self, start: int, stop: int, indptr: np.ndarray | None = None
    ) -> sparse.csr_array | sparse.csc_array:
        """Majors `start:stop`; their part of indptr (`indptr[start:stop + 1]`) is read unless
        given or already held."""
        if indptr is None:
            if "indptr" in self.__dict__:
                indptr = self.indptr[start : stop + 1]
            else:
                (indptr,) = read_slices([(self._indptr_array, slice(start, stop + 1))])
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


def read_slices(reads: list[tuple[ShardedVector, slice]]) -> list[np.ndarray]:
    """Each (array, slice) read, all at once: one round trip once the shard indexes are held."""
    by_array: dict[int, tuple[ShardedVector, list[int]]] = {}
    for position, (vector, _) in enumerate(reads):
        by_array.setdefault(id(vector), (vector, []))[1].append(position)

    async def read_all():
        groups = list(by_array.values())
        results = await asyncio.gather(
            *(vector.read([reads[p][1] for p in positions]) for vector, positions in groups)
        )
        values: list[np.ndarray | None] = [None] * len(reads)
        for (_, positions), arrays in zip(groups, results, strict=True):
            for position, array in zip(positions, arrays, strict=True):
                values[position] = array
        return values

    return sync(read_all())
