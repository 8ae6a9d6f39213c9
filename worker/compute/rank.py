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

    cells = block.indices
    stored = (in_group1[cells] | in_group2[cells]) & (block.data != 0)
    # Each gene's entries stay contiguous and in cell order once filtered.
    gene_starts = np.concatenate(([0], np.cumsum(stored)))[block.indptr]
    cells = cells[stored]
    log_values = log_normalise(block.data[stored], total_counts[cells])
    sums = _group_sums(gene_starts, log_values, in_group1[cells], n1, n2, method == "wilcoxon")
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
def _group_sums(gene_starts, log_values, first, n1, n2, rank):
    """Per gene (rows): group 1's sum, sum of squares and nonzero count, the same for group 2,
    and group 1's sum of tie-averaged ranks among the cells of both groups (if `rank`).

    Sums are float64 of float32 values and float32 squares, added in cell order, as
    `np.bincount` adds them. Values are nonnegative, so a gene's zeros are one tie block holding
    the lowest ranks; only its stored nonzero values are sorted. Rank sums are sums of halves,
    exact in any order.
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
        values = log_values[start:stop]
        order = np.argsort(values)
        tie_start = 0
        while tie_start < len(order):
            tie_end = tie_start + 1
            while tie_end < len(order) and values[order[tie_end]] == values[order[tie_start]]:
                tie_end += 1
            # Ranks tie_start + 1 .. tie_end above the zeros average to this.
            tie_rank = zeros + (tie_start + tie_end + 1) / 2.0
            for position in range(tie_start, tie_end):
                if first[start + order[position]]:
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
