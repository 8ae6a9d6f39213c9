import functools

import numpy as np
import pytest
import scanpy as sc
from scipy import sparse

from tests.compute.synthetic import log_normalised_anndata, row_blocks
from worker.compute.hvg import seurat_hvg
from worker.compute.pca import (
    CovarianceSum,
    ScaleParameters,
    n_components,
    principal_components,
    project_block,
    scale_parameters,
    shifted_block,
)
from worker.compute.qc import summarise_row_block

N_TOP_GENES = 120


def merged(parts):
    return functools.reduce(lambda a, b: a.merge(b), parts)


# 0: every block's Gram matrix by the sparse kernel; 1: every one as a dense product.
@pytest.mark.parametrize("dense_density", [1.0, 0.0])
@pytest.mark.parametrize("n_blocks", [1, 3, 5])
def test_streamed_pca_equals_scanpy(counts_and_clusters, n_blocks, dense_density):
    counts, _ = counts_and_clusters
    n_cells = counts.shape[0]
    blocks = row_blocks(counts, n_blocks)
    summaries = [summarise_row_block(b, np.zeros(counts.shape[1], dtype=bool)) for b in blocks]
    moments = merged(s.gene_moments for s in summaries)
    hvg_index = np.flatnonzero(seurat_hvg(moments, n_cells, N_TOP_GENES)["highly_variable"])
    scale = scale_parameters(moments, n_cells, hvg_index)
    shifted = [
        shifted_block(b, s.total_counts, hvg_index, scale)
        for b, s in zip(blocks, summaries, strict=True)
    ]
    n_comps = n_components(n_cells, len(hvg_index))
    sums = merged(CovarianceSum.of_block(x, dense_density=dense_density) for x in shifted)
    pcs = principal_components(sums, n_comps)
    x_pca = np.concatenate([project_block(x, pcs) for x in shifted])

    adata = log_normalised_anndata(counts)
    sc.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=N_TOP_GENES)
    np.testing.assert_array_equal(hvg_index, np.flatnonzero(adata.var["highly_variable"]))
    adata = adata[:, adata.var["highly_variable"]].copy()
    sc.pp.scale(adata, max_value=10)
    sc.pp.pca(adata, n_comps=n_comps, svd_solver="covariance_eigh")

    assert n_comps == 50
    np.testing.assert_allclose(scale.mean, adata.var["mean"], rtol=1e-12)
    np.testing.assert_allclose(scale.std, adata.var["std"], rtol=1e-12)
    # Shifted back, the values are scanpy's scaled ones; zero where the count is zero.
    shifted_values = sparse.vstack(shifted).toarray()
    np.testing.assert_array_equal(shifted_values != 0, counts[:, hvg_index].toarray() != 0)
    np.testing.assert_allclose(shifted_values + scale.zero_scaled, adata.X, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pcs.variance, adata.uns["pca"]["variance"], rtol=1e-10)
    np.testing.assert_allclose(pcs.variance_ratio, adata.uns["pca"]["variance_ratio"], rtol=1e-10)
    np.testing.assert_allclose(pcs.components, adata.varm["PCs"].T, atol=1e-8)
    assert x_pca.dtype == np.float32
    np.testing.assert_allclose(x_pca, adata.obsm["X_pca"], rtol=1e-5, atol=1e-4)


def test_sparse_and_dense_gram_agree_with_clipped_values():
    """Values clipped at both ends (a gene whose zero counts scale below -10, a count that
    scales above 10) and an empty row: the shifted values are the scaled ones less each gene's
    zero, and their Gram matrix and column sums are the dense formula's, by either kernel."""
    counts = sparse.random(300, 40, density=0.2, random_state=4, format="csr", dtype=np.float32)
    counts.data = np.ceil(counts.data * 5)
    counts[:, 0] = 2
    counts[7, 1] = 40
    counts[9] = 0
    counts.eliminate_zeros()
    counts.sort_indices()
    total_counts = np.asarray(counts.sum(axis=1)).ravel()
    dense = counts.toarray()
    size_factors = np.maximum(total_counts, 1)[:, None].astype(np.float32) / np.float32(1e4)
    log_values = np.log1p(dense / size_factors).astype(np.float64)
    mean, std = log_values.mean(axis=0), log_values.std(axis=0, ddof=1)
    std[0] = mean[0] / 20  # a zero count of gene 0 scales to -20
    std[1] = (log_values[7, 1] - mean[1]) / 15  # cell 7's count of gene 1 scales to 15
    scale = ScaleParameters(mean, std)
    shifted = shifted_block(counts, total_counts, np.arange(40), scale)

    scaled = np.clip((log_values - mean) / std, -10, 10)
    assert scale.zero_scaled[0] == -10 and scaled[7, 1] == 10
    np.testing.assert_allclose(shifted.toarray() + scale.zero_scaled, scaled, atol=1e-6)
    np.testing.assert_array_equal(shifted.toarray() != 0, dense != 0)
    expected = (scaled - scale.zero_scaled).T @ (scaled - scale.zero_scaled)
    by_kernel = [CovarianceSum.of_block(shifted, dense_density=d) for d in (1.0, 0.0)]
    for sums in by_kernel:
        assert sums.n_cells == 300
        np.testing.assert_allclose(sums.gram, expected, rtol=1e-5)
        np.testing.assert_allclose(sums.column_sum, shifted.toarray().sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(by_kernel[0].gram, by_kernel[1].gram, rtol=1e-12)


def test_plain_formula(counts_and_clusters):
    counts, _ = counts_and_clusters
    n_cells = counts.shape[0]
    summary = summarise_row_block(counts, np.zeros(counts.shape[1], dtype=bool))
    hvg_index = np.arange(20, 80)
    scale = scale_parameters(summary.gene_moments, n_cells, hvg_index)
    shifted = shifted_block(counts, summary.total_counts, hvg_index, scale)
    scaled = shifted.toarray() + scale.zero_scaled
    pcs = principal_components(CovarianceSum.of_block(shifted), 10)

    dense = counts.toarray().astype(np.float64)[:, hvg_index]
    log_values = np.log1p(dense / np.maximum(summary.total_counts, 1)[:, None] * 1e4)
    expected = (log_values - log_values.mean(axis=0)) / log_values.std(axis=0, ddof=1)
    np.testing.assert_allclose(scaled, np.clip(expected, -10, 10), rtol=1e-5, atol=1e-5)
    covariance = np.cov(scaled, rowvar=False)
    eigenvalues = np.linalg.eigvalsh(covariance)[::-1]
    np.testing.assert_allclose(pcs.variance, eigenvalues[:10], rtol=1e-10)
    np.testing.assert_allclose(pcs.variance_ratio, eigenvalues[:10] / np.trace(covariance))
    centred = scaled - scaled.mean(axis=0)
    np.testing.assert_allclose(
        project_block(shifted, pcs), centred @ pcs.components.T, rtol=1e-5, atol=1e-5
    )


def test_component_count_follows_the_contract():
    assert n_components(10_000, 2000) == 50
    assert n_components(20, 2000) == 19
    assert n_components(10_000, 12) == 11
