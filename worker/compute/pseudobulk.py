"""Differential expression between groups of samples (the platform's `comparisonType:
"between"`): raw counts summed per pseudobulk sample, genes filtered as edgeR's `filterByExpr`,
TMM normalisation and voom's log-CPM as edgeR and limma compute them, and DESeq2's Wald test
(PyPI pydeseq2) where the platform runs limma-voom's moderated t-test."""

import logging
import warnings

import numpy as np
import pandas as pd

from worker.compute.arithmetic import entry_rows

log = logging.getLogger(__name__)

BASE, BACKGROUND = "base", "background"
# The platform drops pseudobulk samples of fewer cells (its makePseudobulkMatrix).
MIN_CELLS = 10
# R's .Machine$double.xmin: the platform's stand-in for an adjusted p-value of 0.
DOUBLE_XMIN = 2.2250738585072014e-308


def pseudobulk_block(counts, column_of_cell: np.ndarray, n_columns: int) -> np.ndarray:
    """Raw counts of a gene block (cells x genes, CSC) summed into pseudobulk columns:
    `(n_columns, genes)`; a cell whose column is -1 counts in none."""
    columns = column_of_cell[counts.indices]
    genes = entry_rows(counts.indptr)
    inside = columns >= 0
    n_genes = counts.shape[1]
    flat = columns[inside] * n_genes + genes[inside]
    sums = np.bincount(flat, weights=counts.data[inside], minlength=n_columns * n_genes)
    return sums.reshape(n_columns, n_genes)


def filter_by_expr(
    counts: np.ndarray, groups: np.ndarray, min_count: float = 10, min_total_count: float = 15
) -> np.ndarray:
    """edgeR's `filterByExpr(y, group=groups)` with its defaults: genes x samples counts in,
    the mask of genes kept out."""
    library_sizes = counts.sum(axis=0)
    group_sizes = pd.Series(groups).value_counts().to_numpy()
    min_sample_size = group_sizes[group_sizes > 0].min()
    large_n, min_prop = 10, 0.7
    if min_sample_size > large_n:
        min_sample_size = large_n + (min_sample_size - large_n) * min_prop
    cpm_cutoff = min_count / np.median(library_sizes) * 1e6
    cpm = counts / library_sizes * 1e6
    tolerance = 1e-14
    kept_by_cpm = (cpm >= cpm_cutoff).sum(axis=1) >= min_sample_size - tolerance
    return kept_by_cpm & (counts.sum(axis=1) >= min_total_count - tolerance)


def _tmm_factor(obs: np.ndarray, ref: np.ndarray, n_obs: float, n_ref: float) -> float:
    """edgeR's .calcFactorTMM (logratioTrim 0.3, sumTrim 0.05, weighted)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log2((obs / n_obs) / (ref / n_ref))
        abs_expression = (np.log2(obs / n_obs) + np.log2(ref / n_ref)) / 2
        variance = (n_obs - obs) / n_obs / obs + (n_ref - ref) / n_ref / ref
    finite = np.isfinite(log_ratio) & np.isfinite(abs_expression)
    log_ratio, abs_expression, variance = (
        log_ratio[finite],
        abs_expression[finite],
        variance[finite],
    )
    if len(log_ratio) == 0 or np.abs(log_ratio).max() < 1e-6:
        return 1.0
    n = len(log_ratio)
    low_ratio, low_sum = np.floor(n * 0.3) + 1, np.floor(n * 0.05) + 1
    # scipy.stats here, not at the top: the queue process imports every task's module and
    # would hold it (44 MiB) without using it.
    from scipy.stats import rankdata

    ratio_rank, sum_rank = rankdata(log_ratio), rankdata(abs_expression)
    keep = (
        (ratio_rank >= low_ratio)
        & (ratio_rank <= n + 1 - low_ratio)
        & (sum_rank >= low_sum)
        & (sum_rank <= n + 1 - low_sum)
    )
    factor = np.sum(log_ratio[keep] / variance[keep]) / np.sum(1 / variance[keep])
    return float(2 ** (0 if np.isnan(factor) else factor))


def tmm_factors(counts: np.ndarray, library_sizes: np.ndarray) -> np.ndarray:
    """edgeR's `calcNormFactors(method="TMM")` of genes x samples counts, with the given
    library sizes (edgeR keeps the unfiltered ones)."""
    counts = counts[(counts > 0).any(axis=1)]
    upper_quartiles = np.quantile(counts / library_sizes, 0.75, axis=0)
    if np.median(upper_quartiles) < 1e-20:
        reference = int(np.argmax(np.sqrt(counts).sum(axis=0)))
    else:
        reference = int(np.argmin(np.abs(upper_quartiles - upper_quartiles.mean())))
    factors = np.array(
        [
            _tmm_factor(
                counts[:, j], counts[:, reference], library_sizes[j], library_sizes[reference]
            )
            for j in range(counts.shape[1])
        ]
    )
    return factors / np.exp(np.mean(np.log(factors)))


def voom_log_cpm(counts: np.ndarray, library_sizes: np.ndarray, factors: np.ndarray):
    """limma's `voom` expression values: log2 counts per million of the effective libraries."""
    return np.log2((counts + 0.5) / (library_sizes * factors + 1) * 1e6)


def deseq2_wald(counts: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    """pydeseq2's Wald test of base against background (genes x samples counts): its
    `results_df` (log2FoldChange, pvalue, padj, ...), every gene tested (no independent or
    Cook's filtering, as limma tests every gene kept)."""
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.default_inference import DefaultInference
    from pydeseq2.ds import DeseqStats

    samples = [f"pseudobulk{index}" for index in range(counts.shape[1])]
    frame = pd.DataFrame(counts.T.astype(np.int64), index=samples)
    frame.columns = [f"gene{index}" for index in range(counts.shape[0])]
    metadata = pd.DataFrame({"group": groups}, index=samples)
    inference = DefaultInference(n_cpus=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dds = DeseqDataSet(
            counts=frame,
            metadata=metadata,
            design="~group",
            refit_cooks=True,
            quiet=True,
            inference=inference,
        )
        dds.deseq2()
        stats = DeseqStats(
            dds,
            contrast=["group", BASE, BACKGROUND],
            independent_filter=False,
            cooks_filter=False,
            quiet=True,
            inference=inference,
        )
        stats.summary()
    return stats.results_df


def table_of(counts: np.ndarray, groups: np.ndarray) -> dict[str, np.ndarray]:
    """The platform's "between" table of genes x pseudobulk samples `counts` whose group is
    `groups` (BASE or BACKGROUND): `order` (gene indices, table order) and the columns. Two
    samples: `logFC`, `AveExpr` by decreasing |logFC|; more: `p_val`, `logFC`, `AveExpr`,
    `p_val_adj` by p-value. Genes filterByExpr drops come last, their values NaN."""
    counts = np.asarray(counts, dtype=np.float64)
    library_sizes = counts.sum(axis=0)
    kept = filter_by_expr(counts, groups)
    kept_counts = counts[kept]
    factors = tmm_factors(kept_counts, library_sizes)
    expression = voom_log_cpm(kept_counts, library_sizes, factors)
    is_base = groups == BASE
    average = expression.mean(axis=1)
    n_genes = len(counts)
    columns: dict[str, np.ndarray] = {}
    if counts.shape[1] == 2:
        log_fc = expression[:, is_base][:, 0] - expression[:, ~is_base][:, 0]
        order = np.argsort(-np.abs(log_fc), kind="stable")
        columns = {"logFC": log_fc, "AveExpr": average}
    else:
        tested = deseq2_wald(kept_counts, groups)
        p_val = tested["pvalue"].to_numpy()
        p_val_adj = tested["padj"].to_numpy()
        p_val_adj = np.where(p_val_adj == 0, DOUBLE_XMIN, p_val_adj)
        order = np.argsort(np.nan_to_num(p_val, nan=np.inf), kind="stable")
        columns = {
            "p_val": p_val,
            "logFC": tested["log2FoldChange"].to_numpy(),
            "AveExpr": average,
            "p_val_adj": p_val_adj,
        }
    kept_genes = np.flatnonzero(kept)
    table_order = np.concatenate([kept_genes[order], np.flatnonzero(~kept)])
    n_dropped = n_genes - len(kept_genes)
    table = {
        name: np.concatenate([values[order], np.full(n_dropped, np.nan)])
        for name, values in columns.items()
    }
    return {"order": table_order, **table}
