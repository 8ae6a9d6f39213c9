"""Building a store from blocks: the multi-block paths, and memory bounded by the blocks."""

import resource

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from distributed import Client, LocalCluster, worker_client

from worker.datasets.synthetic import SyntheticDataset, as_source_sample
from worker.settings import AwsSettings
from worker.store.build import BuildOptions, BuildPlan, build_store

SMALL_BLOCKS = BuildOptions(rows_per_block=97, pass_block_entries=5_000, shard_elements=4096)


def build(client, url, dataset, options):
    return build_store(
        plan=BuildPlan(url=url, aws=AwsSettings(), options=options),
        samples=[as_source_sample(dataset)],
        client=client,
        provenance={},
    )


def test_small_blocks_and_shards_give_the_same_store(tmp_path, dask_client):
    dataset = SyntheticDataset(n_cells=1500, n_genes=400, seed=2, counts_per_cell=800)
    build(dask_client, str(tmp_path / "default"), dataset, BuildOptions())
    summary = build(dask_client, str(tmp_path / "small"), dataset, SMALL_BLOCKS)
    default = ad.read_zarr(tmp_path / "default")
    small = ad.read_zarr(tmp_path / "small")
    expected = sp.vstack(list(dataset.row_blocks()), format="csr")
    assert summary.nnz == expected.nnz > 2 * SMALL_BLOCKS.shard_elements
    assert (expected != small.X).nnz == 0
    assert (small.layers["counts_by_gene"] != expected.tocsc()).nnz == 0
    assert small.obs.equals(default.obs)
    assert small.var.equals(default.var)
    np.testing.assert_allclose(small.obsm["X_pca"], default.obsm["X_pca"], rtol=1e-3, atol=1e-3)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _build_in_worker(url: str, dataset: SyntheticDataset, options: BuildOptions) -> tuple:
    """Runs on the Dask worker: the growth of its peak memory while building, and the nnz."""
    before = _peak_rss_bytes()
    with worker_client() as client:
        summary = build(client, url, dataset, options)
    return _peak_rss_bytes() - before, summary.nnz


@pytest.mark.slow
def test_peak_memory_grows_with_blocks_not_with_the_matrix(tmp_path):
    """One worker process does every step; a matrix four times larger, in blocks of the same
    size, barely moves its peak. (The neighbour graph, built on the PCA in memory by design,
    is left out here: it grows with cells, not with counts.)"""
    options = BuildOptions(
        rows_per_block=500,
        pass_block_entries=1 << 20,
        shard_elements=1 << 20,
        min_cells_for_graph=10**9,
    )

    def dataset(n_cells: int) -> SyntheticDataset:
        # Small generator blocks: the generator holds one entry per UMI of a block.
        return SyntheticDataset(
            n_cells=n_cells, n_genes=2000, seed=5, counts_per_cell=6000, rows_per_block=256
        )

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, memory_limit="3GiB",
                     dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        client.submit(_build_in_worker, str(tmp_path / "small"), dataset(4000), options).result()
        growth, nnz = client.submit(
            _build_in_worker, str(tmp_path / "large"), dataset(16_000), options
        ).result()
    matrix_bytes = nnz * 8  # float32 counts and int32 indices, as CSR in memory
    assert matrix_bytes > 100e6
    assert growth < matrix_bytes / 4, (growth, matrix_bytes)
