"""Shard-whole writing of contiguous arrays."""

import numpy as np
import zarr

from worker.store.writer import AppendingWriter, create_vector


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
