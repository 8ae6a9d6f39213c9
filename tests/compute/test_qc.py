import functools
import itertools

import numpy as np
import pytest
import scanpy as sc
from anndata import AnnData

from tests.compute.synthetic import log_normalised_anndata, row_blocks
from worker.compute.qc import summarise_row_block


@pytest.mark.parametrize("n_blocks", [1, 3, 7])
def test_row_block_summaries_equal_scanpy(counts_and_clusters, n_blocks):
    counts, _ = counts_and_clusters
    is_mito = np.zeros(counts.shape[1], dtype=bool)
    is_mito[1:6] = True

    summaries = [summarise_row_block(block, is_mito) for block in row_blocks(counts, n_blocks)]
    total_counts = np.concatenate([s.total_counts for s in summaries])
    n_genes = np.concatenate([s.n_genes for s in summaries])
    percent_mito = np.concatenate([s.percent_mito for s in summaries])
    moments = functools.reduce(lambda a, b: a.merge(b), (s.gene_moments for s in summaries))

    adata = AnnData(counts.copy())
    adata.var["mt"] = is_mito
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], percent_top=None, inplace=True)
    np.testing.assert_array_equal(total_counts, adata.obs["total_counts"])
    np.testing.assert_array_equal(n_genes, adata.obs["n_genes_by_counts"])
    np.testing.assert_allclose(percent_mito, adata.obs["pct_counts_mt"].fillna(0), rtol=1e-6)
    assert percent_mito[-1] == 0  # the empty cell
    np.testing.assert_array_equal(moments.n_cells, adata.var["n_cells_by_counts"])

    log_values = log_normalised_anndata(counts).X.toarray().astype(np.float64)
    normalised = np.expm1(log_values.astype(np.float32))
    np.testing.assert_allclose(moments.log_sum, log_values.sum(axis=0), rtol=1e-10)
    np.testing.assert_allclose(moments.log_sum_sq, (log_values**2).sum(axis=0), rtol=1e-6)
    np.testing.assert_allclose(
        moments.normalised_sum, normalised.sum(axis=0, dtype=float), rtol=1e-10
    )
    plain = counts.toarray() / np.maximum(total_counts, 1)[:, None] * 1e4
    np.testing.assert_allclose(moments.normalised_sum, plain.sum(axis=0), rtol=1e-5)


def test_unsorted_indices_give_the_same_summary(counts_and_clusters):
    counts, _ = counts_and_clusters
    is_mito = np.zeros(counts.shape[1], dtype=bool)
    shuffled = counts.copy()
    rng = np.random.default_rng(0)
    for start, stop in itertools.pairwise(shuffled.indptr):
        order = start + rng.permutation(stop - start)
        shuffled.indices[start:stop] = shuffled.indices[order]
        shuffled.data[start:stop] = shuffled.data[order]
    assert not shuffled.has_sorted_indices

    expected = summarise_row_block(counts, is_mito)
    summary = summarise_row_block(shuffled, is_mito)
    np.testing.assert_array_equal(summary.total_counts, expected.total_counts)
    for field in ["n_cells", "normalised_sum", "log_sum", "log_sum_sq"]:
        np.testing.assert_allclose(
            getattr(summary.gene_moments, field), getattr(expected.gene_moments, field)
        )
