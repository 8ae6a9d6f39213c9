import re

import anndata
import fsspec
import numpy as np
import pytest
import scanpy as sc
from scipy import sparse
from sklearn.metrics import adjusted_rand_score

from worker.datasets.synthetic import (
    MITOCHONDRIAL_GENES,
    SyntheticDataset,
    make_pbmc_sample,
    write_10x_h5,
    write_10x_mtx,
    write_h5ad,
)
from worker.store.sources import open_source

LOCAL = fsspec.filesystem("file")


@pytest.fixture(scope="module")
def dataset() -> SyntheticDataset:
    return SyntheticDataset(n_cells=450, n_genes=300, seed=7, rows_per_block=128)


@pytest.fixture(scope="module")
def counts(dataset) -> sparse.csr_matrix:
    return sparse.vstack(list(dataset.row_blocks()), format="csr")


def assert_same_counts(actual, expected: sparse.csr_matrix) -> None:
    actual = sparse.csr_matrix(actual, dtype=np.float32)
    actual.sum_duplicates()
    assert actual.shape == expected.shape
    assert (actual != expected).nnz == 0


def test_blocks_are_deterministic_and_canonical(dataset, counts):
    again = SyntheticDataset(n_cells=450, n_genes=300, seed=7, rows_per_block=128)
    blocks = list(again.row_blocks())
    assert [block.shape[0] for block in blocks] == [128, 128, 128, 66]
    assert_same_counts(sparse.vstack(blocks), counts)
    assert_same_counts(dataset.row_block(2), blocks[2])
    for block in blocks:
        assert block.dtype == np.float32
        assert block.has_canonical_format
        assert np.all(block.data > 0)
        assert np.all(block.data == np.round(block.data))
    other = SyntheticDataset(n_cells=450, n_genes=300, seed=8, rows_per_block=128)
    assert (other.row_block(0) != blocks[0]).nnz > 0
    np.testing.assert_array_equal(again.barcodes, dataset.barcodes)
    np.testing.assert_array_equal(again.cluster_labels, dataset.cluster_labels)


def test_names(dataset):
    assert len(set(dataset.barcodes)) == dataset.n_cells
    assert all(re.fullmatch("[ACGT]{16}-1", barcode) for barcode in dataset.barcodes)
    assert len(set(dataset.gene_ids)) == len(set(dataset.gene_names)) == dataset.n_genes
    assert dataset.gene_ids[0] == "ENSG00000000001"
    assert set(dataset.cluster_labels) == set(range(8))


@pytest.mark.parametrize("layout", ["mtx v3", "mtx v2", "h5", "h5ad"])
def test_written_files_read_back(tmp_path, dataset, counts, layout):
    if layout.startswith("mtx"):
        path = tmp_path / "sample"
        write_10x_mtx(LOCAL, str(path), dataset, version=int(layout[-1]))
        expected = sc.read_10x_mtx(path, var_names="gene_ids")
        gene_ids = expected.var_names
    elif layout == "h5":
        path = tmp_path / "sample.h5"
        write_10x_h5(LOCAL, str(path), dataset)
        expected = sc.read_10x_h5(path)
        gene_ids = expected.var["gene_ids"]
    else:
        path = tmp_path / "sample.h5ad"
        write_h5ad(LOCAL, str(path), dataset)
        expected = anndata.read_h5ad(path)
        gene_ids = expected.var["gene_ids"]
        np.testing.assert_array_equal(expected.var_names, dataset.gene_names)
        assert list(expected.obs["cell_type"].cat.codes) == list(dataset.cluster_labels)
    assert_same_counts(expected.X, counts)
    np.testing.assert_array_equal(expected.obs_names, dataset.barcodes)
    np.testing.assert_array_equal(gene_ids, dataset.gene_ids)

    [sample] = open_source(LOCAL, str(path))
    assert_same_counts(sparse.vstack(list(sample.row_blocks(100))), counts)
    np.testing.assert_array_equal(sample.barcodes, dataset.barcodes)
    np.testing.assert_array_equal(sample.gene_ids, dataset.gene_ids)
    np.testing.assert_array_equal(sample.gene_names, dataset.gene_names)


def test_pbmc_sample_genes():
    sample = make_pbmc_sample()
    assert (sample.n_cells, sample.n_genes, sample.n_clusters) == (2700, 2000, 8)
    genes = set(sample.gene_names)
    assert {"TGFB1", "CST3", "CD3D", "MS4A1", "LYZ", "NKG7"} <= genes
    assert set(MITOCHONDRIAL_GENES) <= genes
    assert len(MITOCHONDRIAL_GENES) == 13


@pytest.mark.slow
def test_louvain_finds_the_clusters():
    sample = make_pbmc_sample()
    adata = anndata.AnnData(sparse.vstack(list(sample.row_blocks()), format="csr"))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, flavor="seurat")
    sc.pp.scale(adata, max_value=10)
    sc.pp.pca(adata, n_comps=50, mask_var="highly_variable", svd_solver="covariance_eigh")
    sc.pp.neighbors(adata)
    sc.tl.louvain(adata, flavor="igraph")
    assert adjusted_rand_score(sample.cluster_labels, adata.obs["louvain"]) > 0.9
