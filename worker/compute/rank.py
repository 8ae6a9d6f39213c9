"""Differential expression of groups of cells, one gene block at a time.

`rank_gene_block` equals `sc.tl.rank_genes_groups(groups=[g1], reference=g2 or "rest",
use_raw=False, tie_correct=False)` on log-normalised data, computed from CSC blocks of raw
counts. Every statistic of a gene depends on that gene alone, except the Benjamini-Hochberg
adjustment, which `adjust_pvalues` applies once to the p-values of all genes. Its kernel,
`group_sums`, serves any number of groups (presto's statistics, `compute/wilcoxauc`).
"""

from typing import Literal

import numba
import numpy as np
from scipy import sparse

from worker.compute.arithmetic import log_normalise, mean_variance

Method = Literal["wilcoxon", "t-test"]

# A cell in no group; the rows of `group_sums`' statistics.
NO_GROUP = -1
SUM, SQUARES, NONZERO, RANK_SUM = range(4)
GROUP_BITS = np.uint64(0xFFFFFFFF)


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

    group_of_cell = np.full(len(in_group1), NO_GROUP, dtype=np.int32)
    group_of_cell[in_group1] = 0
    group_of_cell[in_group2] = 1
    gene_starts, cells, counts, groups = entries_in_groups(
        block.indptr, block.indices, block.data, group_of_cell
    )
    log_values = log_normalise(counts, total_counts[cells])
    sums, _ties = group_sums(
        gene_starts,
        log_values,
        groups,
        np.array([n1, n2], dtype=np.int64),
        method == "wilcoxon",
    )
    (sum1, sum2), (squares1, squares2) = sums[SUM], sums[SQUARES]
    mean1, var1 = mean_variance(sum1, squares1, n1)
    mean2, var2 = mean_variance(sum2, squares2, n2)
    nonzero1, nonzero2, rank_sum = sums[NONZERO, 0], sums[NONZERO, 1], sums[RANK_SUM, 0]

    # scipy.stats here, not at the top: the queue process imports every task's module and
    # would hold it (44 MiB) without using it.
    from scipy import stats

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
def entries_in_groups(indptr, cells, values, group_of_cell):
    """The nonzero entries of cells in a group (`group_of_cell` not NO_GROUP), in one pass:
    `(gene_starts, cells, values, groups)`, each gene's entries still contiguous and in cell
    order."""
    n_genes = len(indptr) - 1
    gene_starts = np.empty(n_genes + 1, np.int64)
    kept_cells = np.empty(len(cells), cells.dtype)
    kept_values = np.empty(len(cells), values.dtype)
    groups = np.empty(len(cells), np.int32)
    kept = 0
    for gene in range(n_genes):
        gene_starts[gene] = kept
        for entry in range(indptr[gene], indptr[gene + 1]):
            group = group_of_cell[cells[entry]]
            if group != NO_GROUP and values[entry] != 0:
                kept_cells[kept] = cells[entry]
                kept_values[kept] = values[entry]
                groups[kept] = group
                kept += 1
    gene_starts[n_genes] = kept
    return gene_starts, kept_cells[:kept], kept_values[:kept], groups[:kept]


@numba.njit(cache=True, nogil=True)
def group_sums(gene_starts, log_values, groups, group_sizes, rank):
    """Per statistic, group and gene (`sums[statistic, group, gene]`): the group's sum, sum of
    squares and nonzero count, and (if `rank`) its sum of tie-averaged ranks among the cells of
    all groups; and per gene the tie term of the rank-sum variance, the sum of t^3 - t over its
    tie blocks (the zeros included).

    Sums are float64 of float32 values and float32 squares, added in cell order, as
    `np.bincount` adds them. Values are nonnegative, so a gene's zeros are one tie block holding
    the lowest ranks; only its stored nonzero values are sorted, once for every group, as packed
    keys (the value's float32 bits, which order nonnegative floats as the floats, above the
    group) so the sort moves plain integers. Rank sums are sums of halves, exact in any order.
    """
    n_genes = len(gene_starts) - 1
    n_groups = len(group_sizes)
    n_cells = group_sizes.sum()
    value_bits = log_values.view(np.uint32)
    sums = np.zeros((4, n_groups, n_genes))
    ties = np.zeros(n_genes)
    rank_sums = np.empty(n_groups)
    for gene in range(n_genes):
        start, stop = gene_starts[gene], gene_starts[gene + 1]
        for entry in range(start, stop):
            value = log_values[entry]
            group = groups[entry]
            sums[SUM, group, gene] += value
            sums[SQUARES, group, gene] += value * value
            sums[NONZERO, group, gene] += 1
        if not rank:
            continue
        zeros = n_cells - (stop - start)
        ties[gene] = float(zeros) ** 3 - zeros
        for group in range(n_groups):
            rank_sums[group] = (group_sizes[group] - sums[NONZERO, group, gene]) * (zeros + 1) / 2.0
        keys = np.empty(stop - start, np.uint64)
        for entry in range(start, stop):
            keys[entry - start] = (np.uint64(value_bits[entry]) << np.uint64(32)) | np.uint64(
                groups[entry]
            )
        keys.sort()
        tie_start = 0
        while tie_start < len(keys):
            value_key = keys[tie_start] >> np.uint64(32)
            tie_end = tie_start + 1
            while tie_end < len(keys) and keys[tie_end] >> np.uint64(32) == value_key:
                tie_end += 1
            # Ranks tie_start + 1 .. tie_end above the zeros average to this.
            tie_rank = zeros + (tie_start + tie_end + 1) / 2.0
            for position in range(tie_start, tie_end):
                rank_sums[keys[position] & GROUP_BITS] += tie_rank
            tied = float(tie_end - tie_start)
            ties[gene] += tied**3 - tied
            tie_start = tie_end
        sums[RANK_SUM, :, gene] = rank_sums
    return sums, ties


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
