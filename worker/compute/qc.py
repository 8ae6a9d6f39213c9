"""Per-cell quality metrics and mergeable per-gene moments from one row block of raw counts."""

from dataclasses import dataclass, fields

import numba
import numpy as np
from scipy import sparse

from worker.compute.arithmetic import entry_rows, log_normalise


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
    n_rows, n_genes = counts_block.shape
    counts = counts_block.data
    rows = entry_rows(counts_block.indptr)
    genes = counts_block.indices

    total_counts = np.bincount(rows, weights=counts, minlength=n_rows)
    mito_counts = np.bincount(rows, weights=counts * is_mito[genes], minlength=n_rows)
    percent_mito = np.zeros(n_rows)
    np.divide(mito_counts, total_counts, out=percent_mito, where=total_counts > 0)
    percent_mito *= 100

    log_values = log_normalise(counts, total_counts[rows])
    sums = _gene_sums(genes, counts, np.expm1(log_values), log_values, n_genes)
    moments = GeneMoments(
        n_cells=sums[0].astype(np.int64),
        normalised_sum=sums[1],
        normalised_sum_sq=sums[2],
        log_sum=sums[3],
        log_sum_sq=sums[4],
    )
    return RowBlockSummary(
        total_counts=total_counts,
        n_genes=np.bincount(rows[counts > 0], minlength=n_rows),
        percent_mito=percent_mito,
        gene_moments=moments,
    )


@numba.njit(cache=True, nogil=True)
def _gene_sums(genes, counts, normalised, log_values, n_genes):
    """Per gene: cells with a nonzero count, and the sums of normalised and log values and of
    their squares, in one pass. Squares are float32 and sums float64, added in entry order:
    what `np.bincount(genes, weights=...)` gives, in one pass instead of five."""
    sums = np.zeros((5, n_genes))
    for entry in range(len(genes)):
        gene = genes[entry]
        if counts[entry] > 0:
            sums[0, gene] += 1
        normalised_value = normalised[entry]
        log_value = log_values[entry]
        sums[1, gene] += normalised_value
        sums[2, gene] += normalised_value * normalised_value
        sums[3, gene] += log_value
        sums[4, gene] += log_value * log_value
    return sums
