"""Streaming the gene-major counts in blocks of whole genes, one Dask task per block."""

import itertools

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

from tests.conftest import SYNTHETIC_EXPERIMENT
from worker.settings import AwsSettings
from worker.store.experiment import open_experiment
from worker.store.gene_blocks import major_ranges, map_gene_blocks
from worker.store.locations import zarr_store


@pytest.mark.parametrize("seed", range(5))
def test_ranges_cover_every_gene_once_in_blocks_of_about_the_size(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 30, rng.integers(1, 40))
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    entries_per_block = 25

    ranges = major_ranges(indptr, entries_per_block)

    assert ranges[0][0] == 0 and ranges[-1][1] == len(lengths)
    assert all(stop == next_first for (_, stop), (next_first, _) in itertools.pairwise(ranges))
    for first, stop in ranges:
        assert first < stop
        # a block passes the size only with its last gene
        assert indptr[stop - 1] - indptr[first] < entries_per_block


def column_sums(counts_by_gene_block: sparse.sparray, weight: float) -> np.ndarray:
    return weight * np.asarray(counts_by_gene_block.sum(axis=0)).ravel()


def column_sums_by_block(
    store_root: str, experiment_id: str, aws: AwsSettings, entries_per_block: int
) -> list[np.ndarray]:
    store = open_experiment(store_root, experiment_id, aws)
    return map_gene_blocks(store, column_sums, 2.0, entries_per_block=entries_per_block)


def test_blocks_come_back_in_gene_order(dask_client, session_settings, prepared_synthetic):
    blocks = dask_client.submit(
        column_sums_by_block,
        session_settings.store_root,
        SYNTHETIC_EXPERIMENT,
        session_settings.aws,
        prepared_synthetic["nnz"] // 7,
        pure=False,
    ).result()

    adata = ad.read_zarr(
        zarr_store(prepared_synthetic["store"], session_settings.aws, read_only=True)
    )
    assert len(blocks) >= 7
    np.testing.assert_allclose(
        np.concatenate(blocks), 2.0 * np.asarray(adata.X.sum(axis=0)).ravel(), rtol=1e-6
    )
