"""Shard-whole writing of contiguous arrays, sequential and parallel."""

import numpy as np
import pytest
import zarr

from worker.store.writer import AppendingWriter, create_vector, owned_ranges, write_owned


@pytest.mark.parametrize("seed", range(5))
def test_parallel_segments_cover_every_element_once_in_whole_shards(tmp_path, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 30, rng.integers(1, 12))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = rng.random(offsets[-1]).astype(np.float32)
    shard = 8
    owned = owned_ranges(offsets, shard)
    covered = np.zeros(len(values), dtype=int)
    for entry in owned:
        if entry is not None:
            assert entry.start % shard == 0
            assert entry.stop % shard == 0 or entry.stop == len(values)
            covered[entry.start : entry.stop] += 1
    assert (covered == 1).all()

    group = zarr.open_group(tmp_path, mode="w", zarr_format=3)
    array = create_vector(group, "values", len(values), np.float32, shard_elements=shard)
    segments = [(values[offsets[k] : offsets[k + 1]],) for k in range(len(lengths))]
    for entry in owned:
        if entry is not None:
            write_owned([array], entry, *(segments[k] for k in entry.segments))
    np.testing.assert_array_equal(array[:], values)


def test_appending_writer_writes_blocks_in_order(tmp_path):
    rng = np.random.default_rng(3)
    blocks = [rng.random(n).astype(np.float32) for n in (5, 0, 17, 3, 40, 1)]
    values = np.concatenate(blocks)
    group = zarr.open_group(tmp_path, mode="w", zarr_format=3)
    array = create_vector(group, "values", 0, np.float32, shard_elements=8)
    indices = create_vector(group, "indices", 0, np.int32, shard_elements=8)
    writer = AppendingWriter([array, indices])
    for block in blocks:
        writer.append(block, np.arange(len(block), dtype=np.int32))
    assert writer.close() == len(values)
    np.testing.assert_array_equal(array[:], values)
    np.testing.assert_array_equal(indices[:], np.concatenate([np.arange(len(b)) for b in blocks]))
