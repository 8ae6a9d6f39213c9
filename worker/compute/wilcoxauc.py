"""presto's `wilcoxauc`, the platform's statistics for differential expression and marker
genes: each group of cells against the other grouped cells, with the rank-sum U, its AUC, a
tie-corrected p-value, the difference of mean log-normalised values and the percent of cells
expressing (immunogenomics/presto `R/wilcoxauc.R`).

A "labelling" gives each cell a group (0..k-1) or `NO_GROUP`; `group_rank_sums` ranks a block
of genes once per labelling (every group's rank sums from one sort of each gene), so several
comparisons share one pass over the store.
"""

import numpy as np
from scipy import sparse

from worker.compute.arithmetic import log_normalise
from worker.compute.pseudobulk import DOUBLE_XMIN
from worker.compute.rank import (
    NO_GROUP,
    NONZERO,
    RANK_SUM,
    SUM,
    adjust_pvalues,
    entries_in_groups,
    group_sums,
)

# The platform's samples (its R worker's, seeded there with R's generator): differential
# expression tests at most DE_CELLS cells of each group, marker genes MARKER_CELLS.
DE_CELLS = 10_000
MARKER_CELLS = 1_000


def labelling(groups: list[np.ndarray], n_cells: int) -> np.ndarray:
    """Each cell's group: the index of the last of `groups` (cell id arrays) holding it, or
    NO_GROUP."""
    labels = np.full(n_cells, NO_GROUP, dtype=np.int32)
    for group, cell_ids in enumerate(groups):
        labels[cell_ids] = group
    return labels


def sample_groups(labels: np.ndarray, max_cells: int, seed: int = 0) -> np.ndarray:
    """`labels` with at most `max_cells` cells left in each group, the others NO_GROUP: a
    sample without replacement by numpy's Generator seeded with `seed`, group by group."""
    sizes = np.bincount(labels[labels != NO_GROUP])
    if not np.any(sizes > max_cells):
        return labels
    rng = np.random.default_rng(seed)
    sampled = labels.copy()
    for group in np.flatnonzero(sizes > max_cells):
        cell_ids = np.flatnonzero(labels == group)
        dropped = np.setdiff1d(cell_ids, rng.choice(cell_ids, max_cells, replace=False))
        sampled[dropped] = NO_GROUP
    return sampled


def present_groups(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`labels` renumbered 0..m-1 over the groups that hold cells, in their order, and the
    numbers those groups had."""
    sizes = np.bincount(labels[labels != NO_GROUP])
    present = np.flatnonzero(sizes)
    renumbered = np.full(len(sizes) + 1, NO_GROUP, dtype=np.int32)
    renumbered[present] = np.arange(len(present), dtype=np.int32)
    # labels == NO_GROUP (-1) reads the last entry, NO_GROUP.
    return renumbered[labels], present


def group_sizes(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels[labels != NO_GROUP]).astype(np.int64)


def group_rank_sums(
    counts_by_gene_block: sparse.sparray, total_counts: np.ndarray, labellings: list[np.ndarray]
) -> list[dict[str, np.ndarray]]:
    """For each labelling: every group's sum of log-normalised values, nonzero count and rank
    sum (groups x genes of the block), and each gene's tie term sum(t^3 - t)."""
    block = sparse.csc_array(counts_by_gene_block)
    results = []
    for labels in labellings:
        gene_starts, cells, counts, groups = entries_in_groups(
            block.indptr, block.indices, block.data, labels
        )
        log_values = log_normalise(counts, total_counts[cells])
        sums, ties = group_sums(gene_starts, log_values, groups, group_sizes(labels), True)
        results.append(
            {
                "sum": sums[SUM],
                "nonzero": sums[NONZERO],
                "rank_sum": sums[RANK_SUM],
                "ties": ties,
            }
        )
    return results


def joined(blocks: list[list[dict[str, np.ndarray]]]) -> list[dict[str, np.ndarray]]:
    """`group_rank_sums` of consecutive gene blocks as one result per labelling."""
    return [
        {name: np.concatenate([block[index][name] for block in blocks], axis=-1) for name in part}
        for index, part in enumerate(blocks[0])
    ]


def wilcoxauc(rank_sums: dict[str, np.ndarray], sizes: np.ndarray) -> dict[str, np.ndarray]:
    """presto's columns (groups x genes) from one labelling's `group_rank_sums`, as presto
    computes them: U = R - n1(n1+1)/2, auc = U/(n1 n2), z = U - n1 n2/2 moved 0.5 towards 0,
    sigma^2 = n1 n2 (N^3 - N - sum(t^3 - t)) / (12 (N^2 - N)), p = 2 Phi(-|z|/sigma) (1 for a
    gene whose cells all tie), BH per group; `logFC` the difference of mean log-normalised
    values in and out of the group (natural log); percentages 0 to 100."""
    n_in = sizes[:, None].astype(np.float64)
    n_all = float(sizes.sum())
    n_out = n_all - n_in
    sums, nonzero = rank_sums["sum"], rank_sums["nonzero"]
    mean_in = sums / n_in
    ustat = rank_sums["rank_sum"] - n_in * (n_in + 1) / 2
    n1n2 = n_in * n_out
    z = ustat - 0.5 * n1n2
    z -= np.sign(z) * 0.5
    spread = n_all**3 - n_all - rank_sums["ties"]
    sigma = np.sqrt(n1n2 * spread / (12 * (n_all**2 - n_all)))
    with np.errstate(invalid="ignore", divide="ignore"):
        z_score = z / sigma
    z_score[~np.isfinite(z_score)] = 0
    # scipy.stats here, not at the top: the queue process imports every task's module and
    # would hold it (44 MiB) without using it.
    from scipy import stats

    pval = 2 * stats.norm.sf(np.abs(z_score))
    return {
        "avgExpr": mean_in,
        "logFC": mean_in - (sums.sum(axis=0) - sums) / n_out,
        "statistic": ustat,
        "auc": ustat / n1n2,
        "pval": pval,
        "padj": np.vstack([adjust_pvalues(group_p) for group_p in pval]),
        "pct_in": 100 * (nonzero / n_in),
        "pct_out": 100 * ((nonzero.sum(axis=0) - nonzero) / n_out),
    }


def base_table(statistics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The platform's differential expression columns: group 0 (the base) against the other
    (the background), adjusted p-values of 0 replaced by R's `.Machine$double.xmin`."""
    p_val_adj = statistics["padj"][0].copy()
    p_val_adj[p_val_adj == 0] = DOUBLE_XMIN
    return {
        "p_val": statistics["pval"][0],
        "logFC": statistics["logFC"][0],
        "pct_1": statistics["pct_in"][0],
        "pct_2": statistics["pct_out"][0],
        "p_val_adj": p_val_adj,
        "auc": statistics["auc"][0],
    }


def top_markers(statistics: dict[str, np.ndarray], n_genes: int) -> np.ndarray:
    """The platform's marker genes (its R `getTopMarkerGenes`): rows with logFC > 0, auc >= 0.3,
    pct_in >= 20 and pct_out <= 70; each gene kept once, in its group of lowest p (the first
    group on a tie); the `n_genes` of highest logFC per group; groups in order. Returns gene
    indices."""
    passes = (
        (statistics["logFC"] > 0)
        & (statistics["auc"] >= 0.3)
        & (statistics["pct_in"] >= 20)
        & (statistics["pct_out"] <= 70)
    )
    # presto's rows: group-major, genes in store order; every sort below is stable.
    groups, genes = np.nonzero(passes)
    by_p = np.argsort(statistics["pval"][groups, genes], kind="stable")
    groups, genes = groups[by_p], genes[by_p]
    _, first = np.unique(genes, return_index=True)
    once = np.sort(first)
    groups, genes = groups[once], genes[once]
    by_logfc = np.argsort(-statistics["logFC"][groups, genes], kind="stable")
    groups, genes = groups[by_logfc], genes[by_logfc]
    by_group = np.argsort(groups, kind="stable")
    groups, genes = groups[by_group], genes[by_group]
    rank_in_group = np.arange(len(groups)) - np.searchsorted(groups, groups, side="left")
    return genes[rank_in_group < n_genes]
