"""DifferentialExpression through the real queue, checked against scanpy's rank_genes_groups."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from tests.conftest import SYNTHETIC_EXPERIMENT, result_body
from tests.tasks.helpers import cell_set, scanpy_log_normalised, store_hierarchy

N_GENES = 1000


@pytest.fixture(scope="module")
def adata(prepared_synthetic, session_settings) -> ad.AnnData:
    return scanpy_log_normalised(prepared_synthetic["store"], session_settings)


@pytest.fixture(scope="module")
def clusters(prepared_synthetic, session_settings, synthetic_dataset) -> dict:
    """Hierarchies of the test: `de-test` holds the generated clusters 0 to 5 (so its rest is
    not the background); `de-custom` holds overlapping sets and a basis."""
    labels = synthetic_dataset.cluster_labels
    children = {f"de-test-{label}": np.flatnonzero(labels == label) for label in range(6)}
    n_cells = len(labels)
    custom = {
        "de-custom-a": np.arange(0, 3000),
        "de-custom-b": np.arange(2000, n_cells),
        "de-custom-even": np.arange(0, n_cells, 2),
        "de-custom-empty": np.arange(0),
    }
    for key, sets in (("de-test", children), ("de-custom", custom)):
        hierarchy = {
            "key": key, "name": key, "rootNode": True, "type": "cellSets",
            "children": [cell_set(child, cell_ids) for child, cell_ids in sets.items()],
        }  # fmt: skip
        store_hierarchy(session_settings, SYNTHETIC_EXPERIMENT, hierarchy)
    return children | custom


def ask(worker, settings, body: dict, experiment_id: str = SYNTHETIC_EXPERIMENT) -> tuple:
    response = worker.ask({"name": "DifferentialExpression", **body}, experiment_id=experiment_id)
    return response, result_body(response, settings)


def scanpy_ranking(
    adata: ad.AnnData, group1: np.ndarray, group2: np.ndarray, method: str, reference: str
) -> pd.DataFrame:
    """rank_genes_groups of group 1 against `reference` ("rest" or "g2") on just the groups'
    cells, by gene name."""
    cells = np.sort(np.concatenate([group1, group2]))
    groups = adata[cells].copy()
    groups.obs["group"] = pd.Categorical(np.where(np.isin(cells, group1), "g1", "g2"))
    sc.tl.rank_genes_groups(
        groups, "group", groups=["g1"], reference=reference, method=method, use_raw=False,
        tie_correct=False,
    )  # fmt: skip
    ranked = groups.uns["rank_genes_groups"]
    fields = ("scores", "logfoldchanges", "pvals", "pvals_adj")
    return pd.DataFrame(
        {field: ranked[field]["g1"] for field in fields}, index=ranked["names"]["g1"]
    )


def assert_rows_equal_scanpy(rows: list[dict], adata, group1, group2, method, reference) -> None:
    result = pd.DataFrame(rows).set_index("gene_names")
    expected = scanpy_ranking(adata, group1, group2, method, reference).loc[result.index]
    np.testing.assert_allclose(result["zscore"], expected["scores"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result["logFC"], expected["logfoldchanges"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result["p_val"], expected["pvals"], rtol=1e-6)
    np.testing.assert_allclose(result["p_val_adj"], expected["pvals_adj"], rtol=1e-6)
    np.testing.assert_array_equal(result["gene_ids"], adata.var.loc[result.index, "gene_ids"])
    expressed = adata[:, result.index].X.toarray() > 0
    for column, group in (("pct_1", group1), ("pct_2", group2)):
        expected_pct = expressed[group].mean(axis=0)
        np.testing.assert_allclose(result[column], expected_pct, rtol=1e-6)


@pytest.mark.parametrize(
    ("compare_with", "method"),
    [("de-test-1", "wilcoxon"), ("rest", "wilcoxon"), ("background", "wilcoxon"),
     ("de-test-1", "t-test"), ("background", "t-test")],
)  # fmt: skip
def test_all_genes_equal_scanpy(
    session_worker, session_settings, adata, clusters, compare_with, method
):
    group1 = clusters["de-test-0"]
    if compare_with == "rest":
        group2 = np.concatenate([clusters[f"de-test-{label}"] for label in range(1, 6)])
    elif compare_with == "background":
        group2 = np.setdiff1d(np.arange(adata.n_obs), group1)
    else:
        group2 = clusters[compare_with]

    response, body = ask(
        session_worker,
        session_settings,
        {"cellSet": "de-test-0", "compareWith": compare_with, "method": method, "maxNum": N_GENES},
    )

    assert response["response"] == {"cacheable": True, "error": False}
    assert body["total"] == N_GENES and len(body["rows"]) == N_GENES
    reference = "g2" if compare_with.startswith("de-test") else "rest"
    assert_rows_equal_scanpy(body["rows"], adata, group1, group2, method, reference)
    order = [(row["p_val_adj"], -abs(row["logFC"])) for row in body["rows"]]
    assert order == sorted(order)


def test_basis_restricts_and_shared_cells_are_dropped(
    session_worker, session_settings, adata, clusters
):
    request = {"cellSet": "de-custom-a", "compareWith": "de-custom-b", "basis": "de-custom-even"}
    _, everything = ask(session_worker, session_settings, request | {"maxNum": N_GENES})
    _, first_rows = ask(session_worker, session_settings, request | {"maxNum": 10})

    # a: 0..2999, b: 2000..4999, basis: even cells
    group1, group2 = np.arange(0, 2000, 2), np.arange(3000, adata.n_obs, 2)
    assert_rows_equal_scanpy(everything["rows"], adata, group1, group2, "wilcoxon", "g2")
    assert first_rows["rows"] == everything["rows"][:10]
    assert first_rows["total"] == N_GENES


@pytest.mark.parametrize(
    ("body", "experiment_id", "code", "named"),
    [
        ({"cellSet": "de-test", "compareWith": "rest"}, SYNTHETIC_EXPERIMENT, "InvalidRequest",
         "body.compareWith"),
        ({"cellSet": "de-custom-a", "compareWith": "de-custom-b", "basis": "de-custom-empty"},
         SYNTHETIC_EXPERIMENT, "InvalidRequest", "body.cellSet"),
        ({"cellSet": "de-custom-a", "compareWith": "de-custom-a"}, SYNTHETIC_EXPERIMENT,
         "InvalidRequest", "body.cellSet"),
        ({"cellSet": "de-test-0", "compareWith": "no-such-set"}, SYNTHETIC_EXPERIMENT,
         "CellSetNotFound", "no-such-set"),
        ({"cellSet": "de-test-0", "compareWith": "rest", "basis": "no-basis"},
         SYNTHETIC_EXPERIMENT, "CellSetNotFound", "no-basis"),
        ({"cellSet": "de-test-0", "compareWith": "rest", "method": "anova"},
         SYNTHETIC_EXPERIMENT, "InvalidRequest", "body.method"),
        ({"cellSet": "de-test-0", "compareWith": "rest", "maxNum": -1}, SYNTHETIC_EXPERIMENT,
         "InvalidRequest", "body.maxNum"),
        ({"cellSet": "de-test-0"}, SYNTHETIC_EXPERIMENT, "InvalidRequest", "body.compareWith"),
        ({"cellSet": "a", "compareWith": "rest"}, "no-such-experiment", "ExperimentNotFound",
         "no-such-experiment"),
    ],
)  # fmt: skip
def test_errors(session_worker, session_settings, clusters, body, experiment_id, code, named):
    response, result = ask(session_worker, session_settings, body, experiment_id)
    assert response["response"] == {"cacheable": False, "error": True}
    assert result["error"]["code"] == code
    assert named in result["error"]["message"]


def test_rest_of_overlapping_sets_follows_the_platforms_rule(
    session_worker, session_settings, adata, clusters
):
    """Issue 16 item 5: `rest` is the union of the sets beside `cellSet`, and cells in both
    groups are dropped from both. Under the old rule (shared cells kept in the first group)
    the reference differs in most of the 50 rows."""
    _, body = ask(
        session_worker, session_settings,
        {"cellSet": "de-custom-a", "compareWith": "rest", "maxNum": 50},
    )  # fmt: skip

    siblings = np.unique(np.concatenate([clusters["de-custom-b"], clusters["de-custom-even"]]))
    shared = np.intersect1d(clusters["de-custom-a"], siblings)
    group1 = np.setdiff1d(clusters["de-custom-a"], shared)
    group2 = np.setdiff1d(siblings, shared)
    # a: 0..2999; siblings: 2000.. and the even cells
    assert np.array_equal(group1, np.arange(1, 2000, 2))
    assert np.array_equal(group2, np.arange(3000, adata.n_obs))
    assert len(body["rows"]) == 50
    assert_rows_equal_scanpy(body["rows"], adata, group1, group2, "wilcoxon", "g2")

    names = [row["gene_names"] for row in body["rows"]]
    old_rule = scanpy_ranking(adata, clusters["de-custom-a"], group2, "wilcoxon", "g2")
    differs = ~np.isclose(
        [row["zscore"] for row in body["rows"]], old_rule.loc[names, "scores"], rtol=1e-3
    )
    assert differs.sum() > 40
