"""Streaming PCA equal to scanpy's `pp.scale(max_value=10)` on the highly variable genes
followed by `pp.pca(svd_solver="covariance_eigh")`.

Two passes over row blocks: the first gives `GeneMoments` (hence the scale parameters), the
second scales each block and sums its Gram matrix; the eigendecomposition is then small, and a
third pass (or the second, keeping the scaled blocks) projects the cells.
"""

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from worker.compute import arithmetic
from worker.compute.arithmetic import entry_rows, log_normalise
from worker.compute.qc import GeneMoments

MAX_COMPONENTS = 50


@dataclass(frozen=True)
class ScaleParameters:
    mean: np.ndarray
    std: np.ndarray


@dataclass(frozen=True)
class CovarianceSum:
    """Column sums and Gram matrix (float64) of scaled rows, added up with `merge`."""

    n_cells: int
    column_sum: np.ndarray
    gram: np.ndarray

    @classmethod
    def of_block(cls, scaled: np.ndarray) -> "CovarianceSum":
        return cls(scaled.shape[0], scaled.sum(axis=0), scaled.T @ scaled)

    def merge(self, other: "CovarianceSum") -> "CovarianceSum":
        return CovarianceSum(
            self.n_cells + other.n_cells,
            self.column_sum + other.column_sum,
            self.gram + other.gram,
        )


@dataclass(frozen=True)
class PrincipalComponents:
    components: np.ndarray  # n_comps x n_hvg
    mean: np.ndarray  # of the scaled (and clipped) values, which is not exactly zero
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


def scaled_block(
    counts_block: sparse.sparray,
    total_counts: np.ndarray,
    hvg_index: np.ndarray,
    scale: ScaleParameters,
) -> np.ndarray:
    """Dense float64 scaled log values of the highly variable genes of a CSR row block."""
    hvg_counts = sparse.csr_array(counts_block)[:, hvg_index]
    log_values = sparse.csr_array(
        (
            log_normalise(hvg_counts.data, total_counts[entry_rows(hvg_counts.indptr)]),
            hvg_counts.indices,
            hvg_counts.indptr,
        ),
        shape=hvg_counts.shape,
    )
    return arithmetic.scale(log_values.toarray().astype(np.float64), scale.mean, scale.std)


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


def project_block(scaled: np.ndarray, pcs: PrincipalComponents) -> np.ndarray:
    """Rows of X_pca (float32) for a block of scaled values."""
    projected = scaled @ pcs.components.T
    projected -= pcs.mean @ pcs.components.T
    return projected.astype(np.float32)
