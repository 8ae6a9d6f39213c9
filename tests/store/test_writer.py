"""Shard-whole writing of contiguous arrays, and elements staged in memory."""

from collections import Counter

import numpy as np
import pandas as pd
import zarr
from anndata.io import read_elem, write_elem

from tests.conftest import make_settings
from worker.local.aws_proxy import AwsProxy
from worker.store.locations import zarr_store
from worker.store.writer import (
    AppendingWriter,
    StagedStore,
    create_sparse_group,
    create_vector,
    element_attributes,
)


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


def test_staged_store_writes_what_anndata_writes_putting_each_object_once(emulator, tmp_path):
    """Elements written through a StagedStore onto S3 read back equal, with the consolidated
    metadata naming the nodes written before and through it; on the way, one listing, one GET
    per existing zarr.json, no HEAD, and each object PUT once."""
    proxy = AwsProxy(emulator.url)
    try:
        settings = make_settings(proxy.url)
        url = f"{settings.store_root}/staged-{tmp_path.name}"
        root = zarr.open_group(zarr_store(url, settings.aws, read_only=False), mode="w")
        root.attrs.update(element_attributes("anndata"))
        create_sparse_group(root, "X", "csr_matrix", (3, 4), 0)
        rng = np.random.default_rng(0)
        obs = pd.DataFrame(
            {
                "total_counts": rng.random(50).astype(np.float32),
                "sample": pd.Categorical(["a", "b"] * 25),
            },
            index=pd.Index([f"cell{i}" for i in range(50)], name="cell"),
        )
        x_pca = rng.random((6000, 50)).astype(np.float32)  # larger than what is staged
        proxy.forget()
        staged = StagedStore.over(root.store)
        group = zarr.open_group(staged, mode="r+", zarr_format=3)
        write_elem(group, "obs", obs)
        write_elem(group, "obsm", {"X_pca": x_pca})
        write_elem(group, "uns", {"worker": {"format": 1, "name": "x"}})
        zarr.consolidate_metadata(staged)
        staged.flush()
        requests = proxy.requests_of("s3")
        assert not [r for r in requests if r.method == "HEAD"]
        puts = Counter(r.key for r in requests if r.method == "PUT")
        assert puts and max(puts.values()) == 1
        gets = [r for r in requests if r.method == "GET"]
        assert sum(1 for r in gets if "list-type" in r.query) == 1
        assert all(r.key.endswith("zarr.json") for r in gets if "list-type" not in r.query)

        read = zarr.open_group(zarr_store(url, settings.aws, read_only=True), mode="r")
        pd.testing.assert_frame_equal(read_elem(read["obs"]), obs)
        np.testing.assert_array_equal(read["obsm/X_pca"][...], x_pca)
        assert read_elem(read["uns"]) == {"worker": {"format": 1, "name": "x"}}
        assert {"X/data", "obs/total_counts", "obsm/X_pca", "uns/worker"} <= set(
            read.metadata.consolidated_metadata.flattened_metadata
        )
    finally:
        proxy.stop()
