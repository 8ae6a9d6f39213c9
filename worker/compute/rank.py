"""Differential expression of two groups of cells, one gene block at a time.

Equal to `sc.tl.rank_genes_groups(groups=[g1], reference=g2 or "rest", use_raw=False,
tie_correct=False)` on log-normalised data, computed from CSC blocks of raw counts. Every
statistic of a gene depends on that gene alone, except the Benjamini-Hochberg adjustment,
which `adjust_pvalues` applies once to the p-values of all genes.
"""

from typing import Literal

import numba
import numpy as np
from scipy import sparse, stats

from worker.compute.arithmetic import log_normalise, mean_variance

Method = Literal["wilcoxon", "t-test"]


def rank_gene_block(
    counts_by_gene_block: sparse.sparray,
    total_counts: np.ndarray,
    in_group1: np.ndarray,
    in_group2: np.ndarray,
    method: Method = "wilcoxon",
) -> dict[str, np.ndarray]:
    """`logFC`, `zscore`, `p_val`, `pct_1`, `pct_2` (fractions) of each gene of the block.

    Rows are cells; cells in neither group are ignored. Group 2 stands for scanpy's reference,
    so "rest" is `in_group2 = ~in_group1`.
    """
    if np.any(in_group1 & in_group2):
        raise ValueError("a cell is in both groups")
    block = sparse.csc_array(counts_by_gene_block)
    n1, n2 = int(np.count_nonzero(in_group1)), int(np.count_nonzero(in_group2))

    group_of_cell = in_group1.astype(np.int8) + 2 * in_group2.astype(np.int8)
    gene_starts, cells, counts, first = _entries_in_groups(
        block.indptr, block.indices, block.data, group_of_cell
    )
    log_values = log_normalise(counts, total_counts[cells])
    sums = _group_sums(
        gene_starts, log_values, log_values.view(np.uint32), first, n1, n2, method == "wilcoxon"
    )
    mean1, var1 = mean_variance(sums[0], sums[1], n1)
    mean2, var2 = mean_variance(sums[3], sums[4], n2)
    nonzero1, nonzero2, rank_sum = sums[2], sums[5], sums[6]

    if method == "wilcoxon":
        with np.errstate(invalid="ignore", divide="ignore"):
            zscore = (rank_sum - n1 * ((n1 + n2 + 1) / 2.0)) / np.sqrt(
                n1 * n2 * (n1 + n2 + 1) / 12.0
            )
        zscore[np.isnan(zscore)] = 0
        p_val = 2 * stats.norm.sf(np.abs(zscore))
    elif method == "t-test":
        with np.errstate(invalid="ignore"):
            zscore, p_val = stats.ttest_ind_from_stats(
                mean1, np.sqrt(var1), n1, mean2, np.sqrt(var2), n2, equal_var=False
            )
        zscore[np.isnan(zscore)] = 0
        p_val[np.isnan(p_val)] = 1
    else:
        raise ValueError(f"unknown method {method!r}")

    return {
        "logFC": np.log2((np.expm1(mean1) + 1e-9) / (np.expm1(mean2) + 1e-9)),
        "zscore": zscore,
        "p_val": p_val,
        "pct_1": nonzero1 / n1,
        "pct_2": nonzero2 / n2,
    }


@numba.njit(cache=True, nogil=True)
def _entries_in_groups(indptr, cells, counts, group_of_cell):
    """The nonzero entries of cells in either group (`group_of_cell` 1 or 2), in one pass:
    `(gene_starts, cells, counts, in_group1)`, each gene's entries still contiguous and in cell
    order."""
    n_genes = len(indptr) - 1
    gene_starts = np.empty(n_genes + 1, np.int64)
    kept_cells = np.empty(len(cells), cells.dtype)
    kept_counts = np.empty(len(cells), counts.dtype)
    first = np.empty(len(cells), np.bool_)
    kept = 0
    for gene in range(n_genes):
        gene_starts[gene] = kept
        for entry in range(indptr[gene], indptr[gene + 1]):
            group = group_of_cell[cells[entry]]
            if group != 0 and counts[entry] != 0:
                kept_cells[kept] = cells[entry]
                kept_counts[kept] = counts[entry]
                first[kept] = group == 1
                kept += 1
    gene_starts[n_genes] = kept
    return gene_starts, kept_cells[:kept], kept_counts[:kept], first[:kept]


@numba.njit(cache=True, nogil=True)
def _group_sums(gene_starts, log_values, value_bits, first, n1, n2, rank):
    """Per gene (rows): group 1's sum, sum of squares and nonzero count, the same for group 2,
    and group 1's sum of tie-averaged ranks among the cells of both groups (if `rank`).

    Sums are float64 of float32 values and float32 squares, added in cell order, as
    `np.bincount` adds them. Values are nonnegative, so a gene's zeros are one tie block holding
    the lowest ranks; only its stored nonzero values are sorted, as packed keys (the value's
    float32 bits, which order nonnegative floats as the floats, then the group) so the sort
    moves plain integers. Rank sums are sums of halves, exact in any order.
    """
    n_genes = len(gene_starts) - 1
    sums = np.zeros((7, n_genes))
    for gene in range(n_genes):
        start, stop = gene_starts[gene], gene_starts[gene + 1]
        for entry in range(start, stop):
            value = log_values[entry]
            row = 0 if first[entry] else 3
            sums[row, gene] += value
            sums[row + 1, gene] += value * value
            sums[row + 2, gene] += 1
        if not rank:
            continue
        zeros = n1 + n2 - (stop - start)
        rank_sum = (n1 - sums[2, gene]) * (zeros + 1) / 2.0
        keys = np.empty(stop - start, np.uint64)
        for entry in range(start, stop):
            keys[entry - start] = (np.uint64(value_bits[entry]) << np.uint64(1)) | np.uint64(
                first[entry]
            )
        keys.sort()
        tie_start = 0
        while tie_start < len(keys):
            value_key = keys[tie_start] >> np.uint64(1)
            tie_end = tie_start + 1
            while tie_end < len(keys) and keys[tie_end] >> np.uint64(1) == value_key:
                tie_end += 1
            # Ranks tie_start + 1 .. tie_end above the zeros average to this.
            tie_rank = zeros + (tie_start + tie_end + 1) / 2.0
            for position in range(tie_start, tie_end):
                if keys[position] & np.uint64(1):
                    rank_sum += tie_rank
            tie_start = tie_end
        sums[6, gene] = rank_sum
    return sums


def adjust_pvalues(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values, as statsmodels' `fdr_bh` (scanpy's `pvals_adj`)."""
    p_values = np.asarray(p_values, dtype=np.float64).copy()
    p_values[np.isnan(p_values)] = 1
    order = np.argsort(p_values)
    n = len(p_values)
    raw = p_values[order] / (np.arange(1, n + 1) / float(n))
    adjusted_sorted = np.minimum.accumulate(raw[::-1])[::-1]
    adjusted_sorted[adjusted_sorted > 1] = 1
    adjusted = np.empty(n)
    adjusted[order] = adjusted_sorted
    return adjusted
