"""PrepareExperiment through the real queue, checked against scanpy on the same files."""

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

from tests.conftest import SHARED_DATA
from worker.store.experiment import zarr_store


def scanpy_reference(name: str) -> ad.AnnData:
    if name == "v2_mtx":
        return sc.read_10x_mtx(SHARED_DATA / "v2_mtx", var_names="gene_ids")
    if name == "v3_mtx_gz":
        return sc.read_10x_mtx(SHARED_DATA / "v3_mtx_gz", var_names="gene_ids")
    if name == "v2_h5":
        return sc.read_10x_h5(SHARED_DATA / "v2_filtered_gene_bc_matrices.h5")
    return sc.read_10x_h5(SHARED_DATA / "v3_filtered_feature_bc_matrix.h5")


@pytest.mark.parametrize("name", ["v2_mtx", "v3_mtx_gz", "v2_h5", "v3_h5"])
def test_store_equals_scanpy_reader(prepared_10x, session_settings, name):
    result = prepared_10x[name]
    store = ad.read_zarr(zarr_store(result["store"], session_settings.aws, read_only=True))
    reference = scanpy_reference(name)
    reference.X.sort_indices()
    assert result["cells"] == reference.n_obs and result["genes"] == reference.n_vars
    assert result["nnz"] == reference.X.nnz
    np.testing.assert_array_equal(store.obs["barcode"], reference.obs_names)
    gene_ids = reference.var.get("gene_ids", reference.var_names)
    np.testing.assert_array_equal(store.var["gene_ids"], gene_ids)
    assert (store.X != reference.X).nnz == 0
    counts_by_gene = store.layers["counts_by_gene"]
    assert counts_by_gene.format == "csc"
    assert (counts_by_gene.tocsr() != store.X).nnz == 0


def scanpy_pipeline(adata: ad.AnnData) -> ad.AnnData:
    """scanpy's own steps, as DESIGN.md names them, on a copy of `adata`."""
    adata = adata.copy()
    adata.var_names_make_unique()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=2000)
    return adata


@pytest.mark.parametrize("name", ["v3_mtx_gz", "v3_h5"])
def test_gene_statistics_and_pca_equal_scanpy(prepared_10x, session_settings, name):
    result = prepared_10x[name]
    store = ad.read_zarr(zarr_store(result["store"], session_settings.aws, read_only=True))
    reference = scanpy_pipeline(scanpy_reference(name))
    for column in ("means", "dispersions", "dispersions_norm"):
        np.testing.assert_allclose(
            store.var[column], reference.var[column], rtol=1e-4, atol=1e-5, equal_nan=True
        )
    np.testing.assert_array_equal(store.var["highly_variable"], reference.var["highly_variable"])
    hvg = reference[:, reference.var["highly_variable"]].copy()
    sc.pp.scale(hvg, max_value=10)
    sc.pp.pca(hvg, n_comps=50, svd_solver="covariance_eigh")
    np.testing.assert_allclose(
        store.uns["pca"]["variance_ratio"], hvg.uns["pca"]["variance_ratio"], rtol=1e-4
    )
    # Components are defined up to sign.
    ours, theirs = store.obsm["X_pca"], hvg.obsm["X_pca"]
    signs = np.sign((ours * theirs).sum(axis=0))
    np.testing.assert_allclose(ours * signs, theirs, rtol=1e-3, atol=1e-3)


def test_qc_columns_equal_plain_formula(prepared_10x, session_settings):
    result = prepared_10x["v3_h5"]
    store = ad.read_zarr(zarr_store(result["store"], session_settings.aws, read_only=True))
    counts = store.X.toarray()
    np.testing.assert_allclose(store.obs["total_counts"], counts.sum(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(store.obs["n_genes"], (counts > 0).sum(axis=1))
    mito = store.var["gene_names"].str.startswith(("MT-", "mt-")).to_numpy()
    expected = 100 * counts[:, mito].sum(axis=1) / counts.sum(axis=1)
    np.testing.assert_allclose(store.obs["percent_mito"], expected, rtol=1e-5)
    np.testing.assert_array_equal(store.var["n_cells"], (counts > 0).sum(axis=0))
