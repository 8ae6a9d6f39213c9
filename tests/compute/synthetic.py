"""Synthetic counts for the compute kernels' consistency tests against scanpy."""

import itertools

import numpy as np
import scanpy as sc
from anndata import AnnData
from scipy import sparse


def negative_binomial_counts(
    n_cells: int, n_genes: int, *, n_clusters: int = 4, seed: int = 0
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Float32 CSR counts (sorted indices) with a few strong genes per cluster, and the
    cluster of each cell. The first gene is never expressed and the last cell is empty."""
    rng = np.random.default_rng(seed)
    clusters = rng.integers(n_clusters, size=n_cells)
    gene_means = np.tile(rng.lognormal(mean=-1.0, sigma=1.5, size=n_genes), (n_clusters, 1))
    for cluster in range(n_clusters):
        markers = rng.choice(np.arange(1, n_genes), size=8, replace=False)
        gene_means[cluster, markers] *= rng.uniform(4, 12, size=8)
    gene_means[:, 0] = 0
    size_factors = rng.lognormal(mean=0.0, sigma=0.4, size=(n_cells, 1))
    expected = size_factors * gene_means[clusters]
    shape = 2.0
    counts = rng.negative_binomial(shape, shape / (shape + expected)).astype(np.float32)
    counts[-1] = 0
    matrix = sparse.csr_matrix(counts)
    matrix.sort_indices()
    return matrix, clusters


def row_blocks(matrix: sparse.csr_matrix, n_blocks: int) -> list[sparse.csr_matrix]:
    bounds = np.linspace(0, matrix.shape[0], n_blocks + 1).astype(int)
    return [matrix[start:stop] for start, stop in itertools.pairwise(bounds)]


def log_normalised_anndata(counts: sparse.csr_matrix) -> AnnData:
    """scanpy's `normalize_total(target_sum=1e4)` and `log1p` of the counts."""
    adata = AnnData(counts.copy())
    adata.var_names = [f"gene{i}" for i in range(counts.shape[1])]
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata
