import functools

import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from tests.compute.synthetic import log_normalised_anndata, row_blocks
from worker.compute.hvg import seurat_hvg
from worker.compute.qc import summarise_row_block


def streamed_hvg(counts, n_blocks: int, n_top_genes: int) -> pd.DataFrame:
    is_mito = np.zeros(counts.shape[1], dtype=bool)
    moments = functools.reduce(
        lambda a, b: a.merge(b),
        (summarise_row_block(b, is_mito).gene_moments for b in row_blocks(counts, n_blocks)),
    )
    return seurat_hvg(moments, counts.shape[0], n_top_genes=n_top_genes)


@pytest.mark.parametrize("n_blocks", [1, 4])
@pytest.mark.parametrize("n_top_genes", [30, 150, 399])
def test_seurat_hvg_equals_scanpy(counts_and_clusters, n_blocks, n_top_genes):
    counts, _ = counts_and_clusters
    genes = streamed_hvg(counts, n_blocks, n_top_genes)

    expected = sc.pp.highly_variable_genes(
        log_normalised_anndata(counts), flavor="seurat", n_top_genes=n_top_genes, inplace=False
    )
    for column in ["means", "dispersions", "dispersions_norm"]:
        np.testing.assert_allclose(genes[column], expected[column], rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(genes["highly_variable"], expected["highly_variable"])
    assert genes["highly_variable"].sum() == n_top_genes
    assert np.isnan(genes["dispersions"].iloc[0])  # the gene never expressed


def test_fewer_genes_than_n_top_genes_keeps_every_varying_gene(counts_and_clusters):
    counts, _ = counts_and_clusters
    genes = streamed_hvg(counts, 3, n_top_genes=2000)

    dense = counts.toarray()
    normalised = dense / np.maximum(dense.sum(axis=1), 1)[:, None] * 1e4
    np.testing.assert_array_equal(genes["highly_variable"], normalised.var(axis=0) > 0)
    # scanpy agrees here: it keeps the genes with a normalised dispersion, the same genes
    expected = sc.pp.highly_variable_genes(
        log_normalised_anndata(counts), flavor="seurat", n_top_genes=2000, inplace=False
    )
    np.testing.assert_array_equal(genes["highly_variable"], expected["highly_variable"])


def test_plain_formula(counts_and_clusters):
    counts, _ = counts_and_clusters
    genes = streamed_hvg(counts, 3, n_top_genes=100)

    dense = counts.toarray().astype(np.float64)
    normalised = dense / np.maximum(dense.sum(axis=1), 1)[:, None] * 1e4
    mean = np.maximum(normalised.mean(axis=0), 1e-12)  # scanpy's floor, also in `means`
    with np.errstate(divide="ignore"):
        dispersion = np.log(normalised.var(axis=0, ddof=1) / mean)
    np.testing.assert_allclose(genes["means"], np.log1p(mean), rtol=1e-5)
    expressed = mean > 1e-12
    np.testing.assert_allclose(genes["dispersions"][expressed], dispersion[expressed], rtol=1e-5)
