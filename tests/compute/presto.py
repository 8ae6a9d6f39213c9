"""The platform's statistics written out for the tests: presto's wilcoxauc with scipy, and its R
marker-gene steps with pandas."""

import numpy as np
import pandas as pd
from scipy import stats

from worker.compute.rank import NO_GROUP


def presto_reference(values: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Each group against the other grouped cells, gene by gene with scipy (groups x genes)."""
    columns = {name: [] for name in ("pval", "auc", "logFC", "pct_in", "pct_out", "padj")}
    for group in range(labels.max() + 1):
        inside, outside = values[labels == group], values[(labels != group) & (labels != NO_GROUP)]
        test = stats.mannwhitneyu(inside, outside, axis=0, method="asymptotic", use_continuity=True)
        columns["pval"].append(test.pvalue)
        columns["auc"].append(test.statistic / (len(inside) * len(outside)))
        columns["logFC"].append(inside.mean(axis=0) - outside.mean(axis=0))
        columns["pct_in"].append(100 * (inside > 0).mean(axis=0))
        columns["pct_out"].append(100 * (outside > 0).mean(axis=0))
        columns["padj"].append(stats.false_discovery_control(test.pvalue, method="bh"))
    return {name: np.array(rows) for name, rows in columns.items()}


def presto_formula(values: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """`presto_reference` from presto's formulas with one `rankdata` of every gene (fast enough
    for many groups): U from the group's rank sum, the normal approximation with continuity
    correction and tie term sum(t^3 - t), p = 1 where every value ties."""
    grouped = values[labels != NO_GROUP]
    groups = labels[labels != NO_GROUP]
    ranks = stats.rankdata(grouped, axis=0)
    n_all = len(groups)
    ordered = np.sort(grouped, axis=0)
    ties = np.zeros(grouped.shape[1])
    for gene, column in enumerate(ordered.T):
        tied = np.diff(np.flatnonzero(np.diff(column, prepend=np.nan, append=np.nan))).astype(float)
        ties[gene] = np.sum(tied**3 - tied)
    columns = {name: [] for name in ("pval", "auc", "logFC", "pct_in", "pct_out", "padj")}
    for group in range(groups.max() + 1):
        inside, outside = grouped[groups == group], grouped[groups != group]
        n1n2 = len(inside) * len(outside)
        ustat = ranks[groups == group].sum(axis=0) - len(inside) * (len(inside) + 1) / 2
        z = ustat - n1n2 / 2
        z -= np.sign(z) * 0.5
        sigma = np.sqrt(n1n2 / 12 * (n_all + 1 - ties / (n_all * (n_all - 1))))
        pval = np.ones(len(z))
        spread = sigma > 0
        pval[spread] = 2 * stats.norm.sf(np.abs(z[spread]) / sigma[spread])
        columns["pval"].append(pval)
        columns["auc"].append(ustat / n1n2)
        columns["logFC"].append(inside.mean(axis=0) - outside.mean(axis=0))
        columns["pct_in"].append(100 * (inside > 0).mean(axis=0))
        columns["pct_out"].append(100 * (outside > 0).mean(axis=0))
        columns["padj"].append(stats.false_discovery_control(pval, method="bh"))
    return {name: np.array(rows) for name, rows in columns.items()}


def pandas_top_markers(statistics: dict[str, np.ndarray], n_genes: int) -> list[int]:
    """The platform's R `getTopMarkerGenes` with pandas: presto's rows (group-major), filter,
    stable sorts, first of each feature, head per group."""
    n_groups, n_features = statistics["pval"].shape
    rows = pd.DataFrame(
        {
            "group": np.repeat(np.arange(n_groups), n_features),
            "feature": np.tile(np.arange(n_features), n_groups),
        }
        | {name: statistics[name].ravel() for name in ("pval", "logFC", "auc", "pct_in", "pct_out")}
    )
    rows = rows[(rows.logFC > 0) & (rows.auc >= 0.3) & (rows.pct_in >= 20) & (rows.pct_out <= 70)]
    rows = rows.sort_values("pval", kind="stable").drop_duplicates("feature", keep="first")
    rows = rows.assign(negative_logFC=-rows.logFC).sort_values("negative_logFC", kind="stable")
    rows = rows.groupby("group", sort=False).head(n_genes).sort_values("group", kind="stable")
    return rows.feature.tolist()
