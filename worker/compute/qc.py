"""Per-cell quality metrics and mergeable per-gene moments from one row block of raw counts."""

from dataclasses import dataclass, fields

import numba
import numpy as np
from scipy import sparse

from worker.compute.arithmetic import TARGET_SUM


@dataclass(frozen=True)
class GeneMoments:
    """Per-gene sums over cells (float64), added up across row blocks with `merge`.

    `normalised` is `expm1` of the float32 log value, as scanpy's seurat HVG flavour recovers
    it; squares are taken in float32 before summing in float64, as scanpy's sparse
    mean/variance kernel does.
    """

    n_cells: np.ndarray
    normalised_sum: np.ndarray
    normalised_sum_sq: np.ndarray
    log_sum: np.ndarray
    log_sum_sq: np.ndarray

    def merge(self, other: "GeneMoments") -> "GeneMoments":
        return GeneMoments(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class RowBlockSummary:
    total_counts: np.ndarray
    n_genes: np.ndarray
    percent_mito: np.ndarray
    gene_moments: GeneMoments


def summarise_row_block(counts_block: sparse.sparray, is_mito: np.ndarray) -> RowBlockSummary:
    """QC metrics of each cell of a CSR block of raw counts, and its per-gene moments."""
    counts_block = sparse.csr_array(counts_block)
    n_genes = counts_block.shape[1]
    genes = counts_block.indices
    total_counts, mito_counts, n_genes_by_cell, normalised = _cell_sums_and_normalised(
        counts_block.indptr, genes, counts_block.data.astype(np.float32, copy=False), is_mito
    )
    percent_mito = np.zeros(len(total_counts))
    np.divide(mito_counts, total_counts, out=percent_mito, where=total_counts > 0)
    percent_mito *= 100

    # log1p and expm1 stay numpy's, whose float32 kernels numba does not reproduce to the bit.
    log_values = np.log1p(normalised)
    sums = _gene_sums(genes, counts_block.data, np.expm1(log_values), log_values, n_genes)
    moments = GeneMoments(
        n_cells=sums[:, 0].astype(np.int64),
        normalised_sum=sums[:, 1].copy(),
        normalised_sum_sq=sums[:, 2].copy(),
        log_sum=sums[:, 3].copy(),
        log_sum_sq=sums[:, 4].copy(),
    )
    return RowBlockSummary(
        total_counts=total_counts,
        n_genes=n_genes_by_cell,
        percent_mito=percent_mito,
        gene_moments=moments,
    )


@numba.njit(cache=True, nogil=True)
def _cell_sums_and_normalised(indptr, genes, counts, is_mito):
    """Per cell: total and mitochondrial counts (float64, added in entry order, as
    `np.bincount(weights=...)`) and genes with a nonzero count; per entry, the count divided
    by its cell's size factor in float32, as `normalize_total(target_sum=1e4)` does."""
    n_rows = len(indptr) - 1
    total_counts = np.zeros(n_rows)
    mito_counts = np.zeros(n_rows)
    n_genes_by_cell = np.zeros(n_rows, dtype=np.int64)
    normalised = np.zeros(len(counts), dtype=np.float32)
    for row in range(n_rows):
        for entry in range(indptr[row], indptr[row + 1]):
            count = counts[entry]
            total_counts[row] += count
            if is_mito[genes[entry]]:
                mito_counts[row] += count
            if count > 0:
                n_genes_by_cell[row] += 1
        size_factor = np.float32(total_counts[row]) / np.float32(TARGET_SUM)
        for entry in range(indptr[row], indptr[row + 1]):
            if counts[entry] != 0:
                normalised[entry] = counts[entry] / size_factor
    return total_counts, mito_counts, n_genes_by_cell, normalised


@numba.njit(cache=True, nogil=True)
def _gene_sums(genes, counts, normalised, log_values, n_genes):
    """Per gene: cells with a nonzero count, and the sums of normalised and log values and of
    their squares, in one pass. Squares are float32 and sums float64, added in entry order:
    what `np.bincount(genes, weights=...)` gives, in one pass instead of five. A gene's five
    sums are side by side, in one cache line."""
    sums = np.zeros((n_genes, 5))
    for entry in range(len(genes)):
        gene_sums = sums[genes[entry]]
        if counts[entry] > 0:
            gene_sums[0] += 1
        normalised_value = normalised[entry]
        log_value = log_values[entry]
        gene_sums[1] += normalised_value
        gene_sums[2] += normalised_value * normalised_value
        gene_sums[3] += log_value
        gene_sums[4] += log_value * log_value
    return sums
