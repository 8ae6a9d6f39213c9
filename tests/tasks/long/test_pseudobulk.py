"""DifferentialExpression "between" over the store, on a Dask worker: the pseudobulk sums, then
pydeseq2 called directly on the same matrix (3+ samples), or edgeR's and limma's formulas
written out (2 samples)."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata

from tests.tasks.long.conftest import CONDITION_GENES, LONG_EXPERIMENT, SAMPLES
from worker.compute.pseudobulk import deseq2_wald
from worker.errors import InvalidRequest
from worker.store.experiment import open_experiment
from worker.store.pseudobulk import between_table


def table_on_dask(settings, base, background):
    def run():
        store = open_experiment(settings.store_root, LONG_EXPERIMENT, settings.aws)
        return between_table(store, base, background)

    return run


@pytest.fixture(scope="module")
def store(long_settings, prepared_long):
    return open_experiment(long_settings.store_root, LONG_EXPERIMENT, long_settings.aws)


def cells_of(store, *samples) -> np.ndarray:
    return np.flatnonzero(np.isin(store.obs["sample"].to_numpy(), samples))


def summed(store, columns: list[np.ndarray]) -> np.ndarray:
    counts = store.rows(0, store.n_cells).toarray()
    return np.stack([counts[cells].sum(axis=0) for cells in columns], axis=1)


def filter_by_expr(counts, groups):
    """edgeR's filterByExpr defaults, written out."""
    library = counts.sum(axis=0)
    smallest = min(np.sum(groups == "base"), np.sum(groups == "background"))
    cpm = counts / library * 1e6
    return ((cpm >= 10 / np.median(library) * 1e6).sum(axis=1) >= smallest) & (
        counts.sum(axis=1) >= 15
    )


def test_more_samples_are_pydeseq2_on_the_pseudobulk_matrix(dask_client, long_settings, store):
    base, background = cells_of(store, "s1", "s2"), cells_of(store, "s3", "s4")
    table = dask_client.submit(table_on_dask(long_settings, base, background)).result()

    pseudobulk = summed(store, [cells_of(store, sample) for sample in SAMPLES])
    groups = np.array(["base", "base", "background", "background"])
    kept = filter_by_expr(pseudobulk, groups)
    tested = deseq2_wald(pseudobulk[kept], groups)
    expected = pd.DataFrame(
        {
            "p_val": tested["pvalue"].to_numpy(),
            "logFC": tested["log2FoldChange"].to_numpy(),
            "Gene": store.var["gene_ids"].to_numpy()[kept],
        }
    ).sort_values("p_val", kind="stable")
    assert set(table) == {"p_val", "logFC", "AveExpr", "p_val_adj", "gene_names", "Gene"}
    n_kept = int(kept.sum())
    assert list(table["Gene"][:n_kept]) == list(expected["Gene"])
    np.testing.assert_allclose(table["p_val"][:n_kept], expected["p_val"], rtol=1e-9)
    np.testing.assert_allclose(table["logFC"][:n_kept], expected["logFC"], rtol=1e-9)
    # Benjamini-Hochberg over the tested genes.
    p = expected["p_val"].to_numpy()
    bh = np.minimum.accumulate((p * n_kept / np.arange(1, n_kept + 1))[::-1])[::-1]
    np.testing.assert_allclose(table["p_val_adj"][:n_kept], np.minimum(bh, 1), rtol=1e-9)
    # Filtered genes come last, all NaN; the condition's genes lead.
    assert np.isnan(table["p_val"][n_kept:]).all() and np.isnan(table["logFC"][n_kept:]).all()
    assert set(table["gene_names"][: len(CONDITION_GENES)]) == set(CONDITION_GENES)


def tmm(counts, library):
    """edgeR's calcNormFactors TMM, written out."""
    counts = counts[(counts > 0).any(axis=1)]
    quartiles = np.quantile(counts / library, 0.75, axis=0)
    reference = np.argmin(np.abs(quartiles - quartiles.mean()))
    factors = []
    for j in range(counts.shape[1]):
        obs, ref, n_obs, n_ref = counts[:, j], counts[:, reference], library[j], library[reference]
        with np.errstate(divide="ignore", invalid="ignore"):
            m = np.log2(obs / n_obs) - np.log2(ref / n_ref)
            a = (np.log2(obs / n_obs) + np.log2(ref / n_ref)) / 2
            v = (n_obs - obs) / n_obs / obs + (n_ref - ref) / n_ref / ref
        finite = np.isfinite(m) & np.isfinite(a)
        m, a, v = m[finite], a[finite], v[finite]
        if np.abs(m).max() < 1e-6:
            factors.append(1.0)
            continue
        n = len(m)
        lo_m, lo_a = np.floor(0.3 * n) + 1, np.floor(0.05 * n) + 1
        rm, ra = rankdata(m), rankdata(a)
        keep = (rm >= lo_m) & (rm <= n + 1 - lo_m) & (ra >= lo_a) & (ra <= n + 1 - lo_a)
        factors.append(2 ** (np.sum(m[keep] / v[keep]) / np.sum(1 / v[keep])))
    factors = np.array(factors)
    return factors / np.exp(np.mean(np.log(factors)))


def test_two_samples_are_the_voom_log_cpm_difference(dask_client, long_settings, store):
    base, background = cells_of(store, "s2"), cells_of(store, "s4")
    table = dask_client.submit(table_on_dask(long_settings, base, background)).result()

    pseudobulk = summed(store, [base, background]).astype(np.float64)
    kept = filter_by_expr(pseudobulk, np.array(["base", "background"]))
    library = pseudobulk.sum(axis=0)
    factors = tmm(pseudobulk[kept], library)
    log_cpm = np.log2((pseudobulk[kept] + 0.5) / (library * factors + 1) * 1e6)
    log_fc = log_cpm[:, 0] - log_cpm[:, 1]
    order = np.argsort(-np.abs(log_fc), kind="stable")
    assert set(table) == {"logFC", "AveExpr", "gene_names", "Gene"}
    n_kept = int(kept.sum())
    genes = store.var["gene_ids"].to_numpy()
    assert list(table["Gene"]) == [*genes[kept][order], *genes[~kept]]
    np.testing.assert_allclose(table["logFC"][:n_kept], log_fc[order], rtol=1e-12)
    np.testing.assert_allclose(table["AveExpr"][:n_kept], log_cpm.mean(axis=1)[order], rtol=1e-12)
    assert np.isnan(table["AveExpr"][n_kept:]).all()


def test_a_group_needs_a_sample_of_ten_cells(dask_client, long_settings, store):
    base, background = cells_of(store, "s1")[:9], cells_of(store, "s3")
    with pytest.raises(InvalidRequest, match=r"body\.cellSet"):
        dask_client.submit(table_on_dask(long_settings, base, background)).result()
