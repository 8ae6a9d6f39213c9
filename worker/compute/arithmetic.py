"""Arithmetic shared by the kernels, written to reproduce scanpy's step for step.

The store leaves the log-normalisation implicit: `log1p(count / total_counts * 1e4)`. It is
evaluated in float32 in scanpy's order of operations (`normalize_total(target_sum=1e4)` then
`log1p`), so values are bit-equal to scanpy's and rank ties fall where scanpy's do.
"""

import numpy as np

TARGET_SUM = 1e4
# scanpy's `pp.scale(max_value=10)`, as the stored PCA uses it.
SCALE_MAX_VALUE = 10


def log_normalise(counts: np.ndarray, total_counts: np.ndarray) -> np.ndarray:
    """Log-normalised float32 values of `counts`, each divided by its cell's `total_counts`.

    A zero count stays zero, also in a cell whose total is zero (scanpy leaves such rows zero).
    """
    counts = np.asarray(counts, dtype=np.float32)
    size_factors = np.asarray(total_counts, dtype=np.float32) / np.float32(TARGET_SUM)
    normalised = np.zeros_like(counts)
    np.divide(counts, size_factors, out=normalised, where=counts != 0)
    return np.log1p(normalised)


def entry_rows(indptr: np.ndarray) -> np.ndarray:
    """Major-axis index of each stored entry of a compressed sparse matrix."""
    return np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))


def mean_variance(sums: np.ndarray, sums_sq: np.ndarray, n_cells: int) -> tuple:
    """Mean and unbiased variance from sums, in scanpy's `_get_mean_var` arithmetic."""
    mean = sums / n_cells
    variance = sums_sq / n_cells - mean**2
    if n_cells != 1:
        variance *= n_cells / (n_cells - 1)
    return mean, variance


def scale_parameters(sums: np.ndarray, sums_sq: np.ndarray, n_cells: int) -> tuple:
    """Mean and standard deviation of `pp.scale`: unbiased variance, a zero deviation taken
    as 1."""
    mean, variance = mean_variance(sums, sums_sq, n_cells)
    std = np.sqrt(variance)
    std[std == 0] = 1
    return mean, std


def scale(values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """`pp.scale(max_value=10)` of float64 `values` with the given (broadcast) parameters."""
    scaled = (values - mean) / std
    return np.clip(scaled, -SCALE_MAX_VALUE, SCALE_MAX_VALUE, out=scaled)


def counts_in_cells(counts_by_gene_block, in_cells: np.ndarray) -> np.ndarray:
    """Each gene's counts summed over the cells where `in_cells` is true (float64, exact for
    counts); the block is cells x genes."""
    return np.asarray(in_cells, dtype=np.float64) @ counts_by_gene_block


def log10_counts(counts: np.ndarray) -> np.ndarray:
    """log10 of each count, float32 (Cellenics v2 shows counts per cell so); 0 gives -inf,
    which JSON writes as null."""
    with np.errstate(divide="ignore"):
        return np.log10(np.asarray(counts, dtype=np.float64)).astype(np.float32)
