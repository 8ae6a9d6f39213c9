"""Streaming PCA equal to scanpy's `pp.scale(max_value=10)` on the highly variable genes
followed by `pp.pca(svd_solver="covariance_eigh")`.

Two passes over row blocks: the first gives `GeneMoments` (hence the scale parameters), the
second sums each block's Gram matrix; the eigendecomposition is then small, and a third pass
projects the cells.

The scaled values are dense (a zero count scales to `-mean/std`), but the covariance does not
change when a constant is taken from each gene: each block is held as its scaled values minus
their gene's value at a zero count, which is zero wherever the count is (`shifted_block`). Its
Gram matrix costs the square of the highly variable genes each cell expresses (about a hundred)
instead of the square of all of them (two thousand), in float64 like scanpy's.
"""

from dataclasses import dataclass

import numba
import numpy as np
from scipy import sparse

from worker.compute import arithmetic
from worker.compute.arithmetic import SCALE_MAX_VALUE, TARGET_SUM
from worker.compute.qc import GeneMoments

MAX_COMPONENTS = 50
# Above this share of nonzero values a block's Gram matrix is cheaper as a dense product
# (measured on one core: 5000 x 2000 at 6%: 118 ms sparse, 308 ms dense; equal near 10%).
DENSE_GRAM_DENSITY = 0.1


@dataclass(frozen=True)
class ScaleParameters:
    mean: np.ndarray
    std: np.ndarray

    @property
    def zero_scaled(self) -> np.ndarray:
        """Each gene's scaled value at a zero count, as `pp.scale(max_value=10)` gives it."""
        return np.clip((0 - self.mean) / self.std, -SCALE_MAX_VALUE, SCALE_MAX_VALUE)


@dataclass(frozen=True)
class CovarianceSum:
    """Column sums and Gram matrix (float64) of shifted rows, added up with `merge`."""

    n_cells: int
    column_sum: np.ndarray
    gram: np.ndarray

    @classmethod
    def of_block(cls, shifted: sparse.csr_array, dense_density: float = DENSE_GRAM_DENSITY):
        n_rows, n_cols = shifted.shape
        column_sum = np.bincount(shifted.indices, weights=shifted.data, minlength=n_cols)
        if shifted.nnz > dense_density * n_rows * n_cols:
            dense = shifted.toarray()
            gram = dense.T @ dense
        else:
            gram = _sparse_gram(shifted.indptr, shifted.indices, shifted.data, n_cols)
        return cls(n_rows, column_sum, gram)

    def merge(self, other: "CovarianceSum") -> "CovarianceSum":
        return CovarianceSum(
            self.n_cells + other.n_cells,
            self.column_sum + other.column_sum,
            self.gram + other.gram,
        )


@dataclass(frozen=True)
class PrincipalComponents:
    components: np.ndarray  # n_comps x n_hvg
    mean: np.ndarray  # of the shifted values
    variance: np.ndarray
    variance_ratio: np.ndarray


def n_components(n_cells: int, n_hvg: int) -> int:
    return min(MAX_COMPONENTS, n_cells - 1, n_hvg - 1)


def scale_parameters(moments: GeneMoments, n_cells: int, hvg_index: np.ndarray) -> ScaleParameters:
    """Mean and standard deviation of the highly variable genes' log values, as `pp.scale`."""
    mean, std = arithmetic.scale_parameters(
        moments.log_sum[hvg_index], moments.log_sum_sq[hvg_index], n_cells
    )
    return ScaleParameters(mean=mean, std=std)


def shifted_block(
    counts_block: sparse.sparray,
    total_counts: np.ndarray,
    hvg_index: np.ndarray,
    scale: ScaleParameters,
) -> sparse.csr_array:
    """The scaled log values of the highly variable genes of a CSR row block, each minus its
    gene's `zero_scaled`: float64, nonzero only where a count is, indices sorted."""
    counts_block = sparse.csr_array(counts_block)
    n_rows, n_genes = counts_block.shape
    position = np.full(n_genes, -1, dtype=np.int64)
    position[hvg_index] = np.arange(len(hvg_index))
    indptr, columns, normalised = _select_and_normalise(
        counts_block.indptr,
        counts_block.indices,
        counts_block.data.astype(np.float32, copy=False),
        position,
        np.asarray(total_counts, dtype=np.float32) / np.float32(TARGET_SUM),
    )
    # log1p stays numpy's, whose float32 kernel numba does not reproduce to the last bit.
    values = _shift(np.log1p(normalised), columns, scale.mean, scale.std, scale.zero_scaled)
    return sparse.csr_array((values, columns, indptr), shape=(n_rows, len(hvg_index)))


def principal_components(covariance_sum: CovarianceSum, n_comps: int) -> PrincipalComponents:
    """The leading `n_comps` components, as scikit-learn's `covariance_eigh` solver finds them."""
    n_cells = covariance_sum.n_cells
    mean = covariance_sum.column_sum / n_cells
    covariance = covariance_sum.gram - n_cells * mean[:, None] * mean[None, :]
    covariance /= n_cells - 1
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    eigenvalues = eigenvalues[::-1].copy()
    eigenvalues[eigenvalues < 0] = 0
    components = eigenvectors[:, ::-1].T.copy()
    # scikit-learn's svd_flip(u_based_decision=False): each component's largest loading is positive
    largest = np.abs(components).argmax(axis=1)
    components *= np.sign(components[np.arange(len(components)), largest])[:, None]
    # The ratio's denominator is the total variance over all components, not only the kept ones.
    variance_ratio = eigenvalues / eigenvalues.sum()
    return PrincipalComponents(
        components=components[:n_comps],
        mean=mean,
        variance=eigenvalues[:n_comps],
        variance_ratio=variance_ratio[:n_comps],
    )


def project_block(shifted: sparse.csr_array, pcs: PrincipalComponents) -> np.ndarray:
    """Rows of X_pca (float32) for a block of shifted values."""
    projected = shifted @ pcs.components.T
    projected -= pcs.mean @ pcs.components.T
    return projected.astype(np.float32)


@numba.njit(cache=True, nogil=True)
def _select_and_normalise(indptr, genes, counts, position, size_factors):
    """The entries of the genes with a `position`, renumbered, as a CSR (indptr, columns) and
    their counts divided by their cell's size factor in float32 (zero counts stay zero), as
    `normalize_total` does."""
    n_rows = len(indptr) - 1
    kept = 0
    for entry in range(indptr[-1]):
        if position[genes[entry]] >= 0:
            kept += 1
    out_indptr = np.zeros(n_rows + 1, dtype=np.int64)
    columns = np.empty(kept, dtype=np.int32)
    normalised = np.empty(kept, dtype=np.float32)
    kept = 0
    for row in range(n_rows):
        size_factor = size_factors[row]
        for entry in range(indptr[row], indptr[row + 1]):
            column = position[genes[entry]]
            if column >= 0:
                columns[kept] = column
                count = counts[entry]
                normalised[kept] = count / size_factor if count != 0 else np.float32(0)
                kept += 1
        out_indptr[row + 1] = kept
    return out_indptr, columns, normalised


@numba.njit(cache=True, nogil=True)
def _shift(log_values, columns, mean, std, zero_scaled):
    shifted = np.empty(len(log_values))
    for entry in range(len(log_values)):
        column = columns[entry]
        scaled = (np.float64(log_values[entry]) - mean[column]) / std[column]
        scaled = min(max(scaled, -SCALE_MAX_VALUE), SCALE_MAX_VALUE)
        shifted[entry] = scaled - zero_scaled[column]
    return shifted


@numba.njit(cache=True, nogil=True)
def _sparse_gram(indptr, columns, values, n_cols):
    """`X.T @ X` of a CSR with sorted indices.

    Gene by gene (row `a` of the result, which stays in cache): each cell expressing `a` adds
    its value times its values of the genes from `a` on. Every product is added in cell
    order, as a dense product over the rows would; the lower triangle is mirrored at the end.
    """
    n_entries = indptr[-1]
    column_start = np.zeros(n_cols + 1, dtype=np.int64)
    for entry in range(n_entries):
        column_start[columns[entry] + 1] += 1
    for column in range(n_cols):
        column_start[column + 1] += column_start[column]
    # The entries column by column, each with the end of its row.
    by_column = np.empty(n_entries, dtype=np.int64)
    row_end = np.empty(n_entries, dtype=np.int64)
    next_free = column_start[:-1].copy()
    for row in range(len(indptr) - 1):
        for entry in range(indptr[row], indptr[row + 1]):
            column = columns[entry]
            by_column[next_free[column]] = entry
            next_free[column] += 1
            row_end[entry] = indptr[row + 1]
    gram = np.zeros((n_cols, n_cols))
    for first_column in range(n_cols):
        target = gram[first_column]
        for position in range(column_start[first_column], column_start[first_column + 1]):
            entry = by_column[position]
            value = values[entry]
            for second in range(entry, row_end[entry]):
                target[columns[second]] += value * values[second]
    for i in range(n_cols):
        for j in range(i + 1, n_cols):
            gram[j, i] = gram[i, j]
    return gram
