import functools

import numpy as np
import pytest
import scanpy as sc

from tests.compute.synthetic import log_normalised_anndata, row_blocks
from worker.compute.hvg import seurat_hvg
from worker.compute.pca import (
    CovarianceSum,
    n_components,
    principal_components,
    project_block,
    scale_parameters,
    scaled_block,
)
from worker.compute.qc import summarise_row_block

N_TOP_GENES = 120


def merged(parts):
    return functools.reduce(lambda a, b: a.merge(b), parts)


@pytest.mark.parametrize("n_blocks", [1, 3, 5])
def test_streamed_pca_equals_scanpy(counts_and_clusters, n_blocks):
    counts, _ = counts_and_clusters
    n_cells = counts.shape[0]
    blocks = row_blocks(counts, n_blocks)
    summaries = [summarise_row_block(b, np.zeros(counts.shape[1], dtype=bool)) for b in blocks]
    moments = merged(s.gene_moments for s in summaries)
    hvg_index = np.flatnonzero(seurat_hvg(moments, n_cells, N_TOP_GENES)["highly_variable"])
    scale = scale_parameters(moments, n_cells, hvg_index)
    scaled = [
        scaled_block(b, s.total_counts, hvg_index, scale)
        for b, s in zip(blocks, summaries, strict=True)
    ]
    n_comps = n_components(n_cells, len(hvg_index))
    pcs = principal_components(merged(CovarianceSum.of_block(x) for x in scaled), n_comps)
    x_pca = np.concatenate([project_block(x, pcs) for x in scaled])

    adata = log_normalised_anndata(counts)
    sc.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=N_TOP_GENES)
    np.testing.assert_array_equal(hvg_index, np.flatnonzero(adata.var["highly_variable"]))
    adata = adata[:, adata.var["highly_variable"]].copy()
    sc.pp.scale(adata, max_value=10)
    sc.pp.pca(adata, n_comps=n_comps, svd_solver="covariance_eigh")

    assert n_comps == 50
    np.testing.assert_allclose(scale.mean, adata.var["mean"], rtol=1e-12)
    np.testing.assert_allclose(scale.std, adata.var["std"], rtol=1e-12)
    np.testing.assert_allclose(np.concatenate(scaled), adata.X, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pcs.variance, adata.uns["pca"]["variance"], rtol=1e-10)
    np.testing.assert_allclose(pcs.variance_ratio, adata.uns["pca"]["variance_ratio"], rtol=1e-10)
    np.testing.assert_allclose(pcs.components, adata.varm["PCs"].T, atol=1e-8)
    assert x_pca.dtype == np.float32
    np.testing.assert_allclose(x_pca, adata.obsm["X_pca"], rtol=1e-5, atol=1e-4)


def test_plain_formula(counts_and_clusters):
    counts, _ = counts_and_clusters
    n_cells = counts.shape[0]
    summary = summarise_row_block(counts, np.zeros(counts.shape[1], dtype=bool))
    hvg_index = np.arange(20, 80)
    scale = scale_parameters(summary.gene_moments, n_cells, hvg_index)
    scaled = scaled_block(counts, summary.total_counts, hvg_index, scale)
    pcs = principal_components(CovarianceSum.of_block(scaled), 10)

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
        project_block(scaled, pcs), centred @ pcs.components.T, rtol=1e-5, atol=1e-5
    )


def test_component_count_follows_the_contract():
    assert n_components(10_000, 2000) == 50
    assert n_components(20, 2000) == 19
    assert n_components(10_000, 12) == 11
