"""Cellenics v2 DifferentialExpression, BatchDifferentialExpression and
GetBackgroundExpressedGenes through the v2 path (real queue, Redis, moto, Dask): `within` checked
against scipy's Mann-Whitney U test on scanpy's log-normalised values of the same store, with the
cells chosen by the platform's rule written out here; `between` against the pseudobulk table
computed directly over the store."""

import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import stats

from tests.conftest import SYNTHETIC_EXPERIMENT
from tests.tasks.helpers import cell_set, scanpy_log_normalised, store_hierarchy
from worker.store.experiment import open_experiment
from worker.store.locations import zarr_store
from worker.store.pseudobulk import between_table

COLUMNS = ["p_val", "logFC", "pct_1", "pct_2", "p_val_adj", "auc", "gene_names", "Gene"]


@pytest.fixture(scope="module")
def client(v2):
    return v2.client


@pytest.fixture(scope="module")
def adata(prepared_synthetic, session_settings) -> ad.AnnData:
    return scanpy_log_normalised(prepared_synthetic["store"], session_settings)


@pytest.fixture(scope="module")
def values(adata) -> np.ndarray:
    return adata.X.toarray().astype(np.float64)


@pytest.fixture(scope="module")
def sets(prepared_synthetic, session_settings, synthetic_dataset) -> dict[str, np.ndarray]:
    """Hierarchies of this module: `v2de` holds the generated clusters 0 to 5; `v2pair` (a
    class used as one set) clusters 0 and 1; `v2custom` overlapping sets, a basis and an empty
    set."""
    labels = synthetic_dataset.cluster_labels
    n_cells = len(labels)
    hierarchies = {
        "v2de": {f"v2de-{label}": np.flatnonzero(labels == label) for label in range(6)},
        "v2pair": {f"v2pair-{label}": np.flatnonzero(labels == label) for label in range(2)},
        "v2custom": {
            "v2custom-a": np.arange(0, 3000),
            "v2custom-b": np.arange(2000, n_cells),
            "v2custom-even": np.arange(0, n_cells, 2),
            "v2custom-empty": np.arange(0),
        },
    }
    for key, children in hierarchies.items():
        store_hierarchy(
            session_settings,
            SYNTHETIC_EXPERIMENT,
            {"key": key, "name": key, "rootNode": True, "type": "cellSets",
             "children": [cell_set(child, ids) for child, ids in children.items()]},
        )  # fmt: skip
    return {child: ids for children in hierarchies.values() for child, ids in children.items()}


def de_body(cell_set_key: str, compare_with: str, basis: str = "all", **extra) -> dict:
    return {"name": "DifferentialExpression", "experimentId": SYNTHETIC_EXPERIMENT,
            "cellSet": cell_set_key, "compareWith": compare_with, "basis": basis,
            "comparisonType": "within", **extra}  # fmt: skip


# "gene" with characters the platform strips: matches GENE... (any case).
PAGE = {
    "orderBy": "auc", "orderDirection": "DESC", "offset": 5, "limit": 20, "responseKey": 0,
    "filters": [
        {"columnName": "gene_names", "type": "text", "expression": "(g.e*ne)"},
        {"columnName": "pct_1", "type": "numeric", "comparison": "greaterThan", "value": 12},
        {"columnName": "Gene", "type": "numeric", "comparison": "lessThan", "value": 3},
    ],
}  # fmt: skip
# An older API's top-level pagination, ascending by gene name, with a numeric filter.
OLDER_PAGE = {
    "orderBy": "gene_names", "orderDirection": "ASC", "offset": 0, "limit": 1000,
    "filters": [{"columnName": "logFC", "comparison": "lessThan", "value": 0}],
}  # fmt: skip
BETWEEN_PAGE = {
    "orderBy": "logFC", "orderDirection": "DESC", "offset": 0, "limit": 30,
    "filters": [{"columnName": "AveExpr", "comparison": "greaterThan", "value": 4}],
}  # fmt: skip
BATCH = {
    "name": "BatchDifferentialExpression", "experimentId": SYNTHETIC_EXPERIMENT,
    "basis": ["all"], "cellSet": ["v2de-4", "v2custom-empty", "v2de-5"],
    "compareWith": "background", "comparisonType": "within",
}  # fmt: skip
# Every request of the module, sent at once so that they compute while the references do:
# name -> (body, fields of the message).
REQUESTS = {
    "rest": (de_body("v2de-0", "rest"), {}),
    "class": (de_body("v2pair", "background", basis="v2custom-even"), {}),
    "overlap": (de_body("v2custom-a", "rest"), {}),
    "page": (de_body("v2de-2", "rest"), {"request_props": {"pagination": PAGE}}),
    "older page": (de_body("v2de-2", "rest"), {"pagination": OLDER_PAGE}),
    "genes only": (
        de_body("v2de-3", "rest", genesOnly=True),
        {"request_props": {"pagination": {"orderBy": "logFC", "orderDirection": "DESC",
                                          "offset": 0, "limit": 7, "responseKey": 0}}},
    ),
    "batch": (BATCH, {}),
    "batch per group": (
        BATCH | {"basis": ["v2custom-a", "v2custom-b"], "cellSet": ["v2de-1"],
                 "compareWith": "v2de-0"},
        {},
    ),
    "background genes": (
        {"name": "GetBackgroundExpressedGenes", "experimentId": SYNTHETIC_EXPERIMENT,
         "cellSet": "v2custom-a", "compareWith": "v2custom-b", "basis": "v2custom-even",
         "comparisonType": "within"},
        {},
    ),
    "empty first": (de_body("v2custom-empty", "rest"), {}),
    "same set": (de_body("v2custom-a", "v2custom-a"), {}),
    "class rest": (de_body("v2pair", "rest"), {}),
    "between page": (
        de_body("v2de-0", "v2de-1", comparisonType="between"),
        {"request_props": {"pagination": BETWEEN_PAGE}},
    ),
    "batch between": (
        BATCH | {"cellSet": ["v2de-4", "v2custom-empty"], "comparisonType": "between"}, {}
    ),
    "no set": (de_body("v2de-0", "no-such-set"), {}),
    "no compareWith": ({"name": "DifferentialExpression", "cellSet": "v2de-0"}, {}),
    "bad regex": (
        de_body("v2de-0", "rest"),
        {"request_props": {"pagination": {"filters": [{"columnName": "gene_names",
                                                       "expression": "[a"}]}}},
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def answers(client, sets):
    """`answers(name)`: the answer to REQUESTS[name]; all are sent when the module starts."""
    messages = {
        name: client.message(body, SYNTHETIC_EXPERIMENT, **fields)
        for name, (body, fields) in REQUESTS.items()
    }
    for message in messages.values():
        client.send(message)
    return lambda name: client.answer(messages[name])


def reference_table(values: np.ndarray, adata, base: np.ndarray, background: np.ndarray):
    """presto's base rows written out: scipy's U test per gene (its p is presto's, ties
    included), auc from U, natural-log mean difference, percent expressing, BH."""
    inside, outside = values[base], values[background]
    test = stats.mannwhitneyu(inside, outside, axis=0, method="asymptotic", use_continuity=True)
    return pd.DataFrame(
        {
            "p_val": test.pvalue,
            "logFC": inside.mean(axis=0) - outside.mean(axis=0),
            "pct_1": 100 * (inside > 0).mean(axis=0),
            "pct_2": 100 * (outside > 0).mean(axis=0),
            "p_val_adj": stats.false_discovery_control(test.pvalue, method="bh"),
            "auc": test.statistic / (len(base) * len(background)),
            "gene_names": adata.var_names.to_numpy(),
            "Gene": adata.var["gene_ids"].to_numpy(),
        }
    )


def assert_table_equals(data: dict, expected: pd.DataFrame) -> None:
    result = pd.DataFrame(data)
    assert list(result.columns) == COLUMNS
    assert result["Gene"].tolist() == expected["Gene"].tolist()
    assert result["gene_names"].tolist() == expected["gene_names"].tolist()
    np.testing.assert_allclose(result["p_val"], expected["p_val"], rtol=1e-9)
    np.testing.assert_allclose(
        result["p_val_adj"], expected["p_val_adj"].clip(lower=2.2250738585072014e-308), rtol=1e-9
    )
    np.testing.assert_allclose(result["auc"], expected["auc"], rtol=1e-12)
    np.testing.assert_allclose(result["logFC"], expected["logFC"], rtol=1e-9, atol=1e-12)
    for column in ("pct_1", "pct_2"):
        np.testing.assert_allclose(result[column], expected[column], rtol=1e-12)


def platform_groups(first, second, basis=None, *, overlap_dropped=True):
    """The platform's rule for a named second set or `rest`: cells in both dropped from both
    (or, the old rule, kept in the first), then both cut to the basis."""
    both = np.intersect1d(first, second) if overlap_dropped else np.arange(0)
    first, second = np.setdiff1d(first, both), np.setdiff1d(second, first)
    if basis is not None:
        first, second = np.intersect1d(first, basis), np.intersect1d(second, basis)
    return first, second


def test_rest_is_the_siblings_and_matches_presto(answers, adata, values, sets):
    answer = answers("rest")

    base = sets["v2de-0"]
    background = np.concatenate([sets[f"v2de-{label}"] for label in range(1, 6)])
    assert answer.result["total"] == adata.n_vars == len(answer.result["data"]["Gene"])
    expected = reference_table(values, adata, base, background)
    assert_table_equals(answer.result["data"], expected)
    assert min(answer.result["data"]["p_val"]) < 1e-50  # the cluster's markers are found

    # scanpy's percentages of the same groups, an independent cross-check.
    cells = np.sort(np.concatenate([base, background]))
    groups = adata[cells].copy()
    groups.obs["group"] = pd.Categorical(np.where(np.isin(cells, base), "base", "background"))
    sc.tl.rank_genes_groups(
        groups, "group", groups=["base"], reference="background", pts=True, use_raw=False
    )
    pts = groups.uns["rank_genes_groups"]
    np.testing.assert_allclose(
        answer.result["data"]["pct_1"], 100 * pts["pts"]["base"].loc[adata.var_names], rtol=1e-6
    )
    np.testing.assert_allclose(
        answer.result["data"]["pct_2"],
        100 * pts["pts"]["background"].loc[adata.var_names],
        rtol=1e-6,
    )


def test_a_class_against_the_background_within_a_basis(answers, adata, values, sets):
    """A class key is the union of its children; background is every other cell of any
    class; the basis cuts both."""
    answer = answers("class")

    first = np.concatenate([sets["v2pair-0"], sets["v2pair-1"]])
    even = sets["v2custom-even"]
    base = np.intersect1d(first, even)
    background = np.setdiff1d(even, first)
    assert_table_equals(answer.result["data"], reference_table(values, adata, base, background))


def test_overlapping_sets_drop_shared_cells_from_both(answers, adata, values, sets):
    """Issue 16 item 5: `rest` of a custom set whose siblings overlap it, as the platform
    reads it; the old rule (shared cells kept in the first group) differs in most rows."""
    answer = answers("overlap")

    siblings = np.concatenate([sets["v2custom-b"], sets["v2custom-even"]])
    base, background = platform_groups(sets["v2custom-a"], np.unique(siblings))
    # a: 0..2999; siblings: 2000.. and the even cells; the base is the odd cells below 2000.
    assert np.array_equal(base, np.arange(1, 2000, 2))
    assert np.array_equal(background, np.arange(3000, adata.n_obs))
    expected = reference_table(values, adata, base, background)
    assert_table_equals(answer.result["data"], expected)

    old_base, old_background = platform_groups(
        sets["v2custom-a"], np.unique(siblings), overlap_dropped=False
    )
    old = reference_table(values, adata, old_base, old_background)
    changed = ~np.isclose(old["p_val"], expected["p_val"], rtol=1e-6)
    assert changed.mean() > 0.9


def expected_page(table: pd.DataFrame, pattern: str, column: str, above: float, order_by: str):
    """The platform's R pagination with pandas: the gene name regex (stripped as its Python
    worker strips it), a numeric filter, a stable sort (descending), then the rows."""
    stripped = re.sub(r"[{}|()?¿*+/.<>]", "", pattern)
    kept = table[table.gene_names.str.contains(stripped, case=False, regex=True)]
    kept = kept[kept[column] > above]
    return kept.assign(key=-kept[order_by]).sort_values("key", kind="stable").drop(columns="key")


def test_pagination_filters_sorts_and_pages(answers, adata, values, sets):
    base = sets["v2de-2"]
    background = np.concatenate([sets[f"v2de-{label}"] for label in (0, 1, 3, 4, 5)])
    table = reference_table(values, adata, base, background)

    answer = answers("page")
    expected = expected_page(table, "(g.e*ne)", "pct_1", 12, "auc")
    assert 25 < len(expected) < adata.n_vars
    assert answer.result["total"] == len(expected)
    assert_table_equals(answer.result["data"], expected.iloc[5:25])

    answer = answers("older page")
    expected = table[table.logFC < 0].sort_values("gene_names", kind="stable")
    assert answer.result["total"] == len(expected) > 0
    assert_table_equals(answer.result["data"], expected)


def test_genes_only_lists_the_first_names(answers, adata, values, sets):
    answer = answers("genes only")
    background = np.concatenate([sets[f"v2de-{label}"] for label in (0, 1, 2, 4, 5)])
    table = reference_table(values, adata, sets["v2de-3"], background)
    top = table.assign(key=-table.logFC).sort_values("key", kind="stable").head(7)
    assert answer.result == {
        "total": 7,
        "data": {"gene_names": top.gene_names.tolist(), "gene_id": top.Gene.tolist()},
    }


@pytest.mark.parametrize(
    ("request_name", "code", "message"),
    [
        ("empty first", "INVALID_INPUT", "No cell id fullfills the 1st cell set."),
        ("same set", "INVALID_INPUT", "No cell id fullfills the 1st cell set."),
        ("class rest", "INVALID_INPUT", "No cell id fullfills the 2nd cell set."),
        ("no set", "INVALID_INPUT", "no-such-set"),
        ("no compareWith", "INVALID_INPUT", "body.compareWith"),
        ("bad regex", "INVALID_INPUT", "regular expression"),
    ],
)
def test_errors(answers, request_name, code, message):
    response = answers(request_name).notification["response"]
    assert response["error"] is True and response["errorCode"] == code
    assert message in response["userMessage"]


def test_batch_pairs_in_one_pass(answers, adata, values, sets):
    """The UI's "fullList" (one basis, each cell set against the background) with a pair that
    has no cells, and its per-group form (each basis against one cell set)."""
    answer = answers("batch")

    assert [row["total"] for row in answer.result] == [adata.n_vars, 0, adata.n_vars]
    assert answer.result[1]["data"] == "No cell id fullfills the 1st cell set."
    for row, key in ((answer.result[0], "v2de-4"), (answer.result[2], "v2de-5")):
        background = np.setdiff1d(np.arange(adata.n_obs), sets[key])
        assert_table_equals(row["data"], reference_table(values, adata, sets[key], background))

    answer = answers("batch per group")
    assert len(answer.result) == 2
    for row, basis in zip(answer.result, ("v2custom-a", "v2custom-b"), strict=True):
        base, background = platform_groups(sets["v2de-1"], sets["v2de-0"], sets[basis])
        assert row["total"] == adata.n_vars
        assert_table_equals(row["data"], reference_table(values, adata, base, background))


def test_background_expressed_genes(answers, adata, sets, prepared_synthetic, session_settings):
    store = zarr_store(prepared_synthetic["store"], session_settings.aws, read_only=True)
    counts = ad.read_zarr(store).X
    answer = answers("background genes")

    base, background = platform_groups(
        sets["v2custom-a"], sets["v2custom-b"], sets["v2custom-even"]
    )
    cells = np.concatenate([base, background])
    totals = np.asarray(counts[cells].sum(axis=0)).ravel()
    expected = adata.var_names[totals > 15].tolist()
    assert 0 < len(expected) < adata.n_vars
    assert answer.result == {"genes": expected}


def between_on_dask(dask_client, settings, base, background) -> pd.DataFrame:
    """The pseudobulk table of these cells, computed over the store on a Dask worker."""

    def run():
        store = open_experiment(settings.store_root, SYNTHETIC_EXPERIMENT, settings.aws)
        return between_table(store, base, background)

    return pd.DataFrame(dask_client.submit(run, pure=False).result())


def test_between_is_the_pseudobulk_table_paginated(
    answers, dask_client, session_settings, adata, sets
):
    """`between` is the pseudobulk table (tested in tests/tasks/long); here, that the task
    resolves the cells and pages it as `within`: nulls dropped, filters, order, page."""
    table = between_on_dask(dask_client, session_settings, sets["v2de-0"], sets["v2de-1"])
    answer = answers("between page")

    kept = table.dropna()
    kept = kept[kept.AveExpr > 4]
    expected = kept.assign(key=-kept.logFC).sort_values("key", kind="stable").drop(columns="key")
    assert len(table) > len(kept) > 30 and answer.result["total"] == len(expected)
    page = pd.DataFrame(answer.result["data"])
    assert list(page.columns) == ["logFC", "AveExpr", "gene_names", "Gene"]
    pd.testing.assert_frame_equal(page, expected.iloc[:30].reset_index(drop=True), rtol=1e-12)

    first, second = answers("batch between").result
    everyone_else = np.setdiff1d(np.arange(adata.n_obs), sets["v2de-4"])
    expected = between_on_dask(dask_client, session_settings, sets["v2de-4"], everyone_else)
    assert first["total"] == len(expected) == adata.n_vars
    pd.testing.assert_frame_equal(pd.DataFrame(first["data"]), expected, rtol=1e-12)
    assert second == {"total": 0, "data": "No cell id fullfills the 1st cell set."}
