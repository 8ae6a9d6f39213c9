"""Cellenics v2 MarkerHeatmap and DotPlot through the v2 path (real queue, Redis, moto, Dask),
checked against the platform's steps written out here: presto's formulas (themselves checked
against scipy's Mann-Whitney U test in tests/compute), its marker selection with pandas,
Seurat's DotPlot formula with numpy (and scanpy's dot plot fractions as a cross-check), on
scanpy's log-normalised values of the same store."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from tests.compute.presto import pandas_top_markers, presto_formula
from tests.conftest import SYNTHETIC_EXPERIMENT
from tests.tasks.helpers import cell_set, scanpy_log_normalised, store_hierarchy
from worker.compute.rank import NO_GROUP

EMPTY_DOT_PLOT = {
    "cellSetsIdx": [], "geneNameIdx": [], "avgExpression": [], "cellsPercentage": [],
    "cellSetsNames": [], "geneNames": [],
}  # fmt: skip


@pytest.fixture(scope="module")
def client(v2):
    return v2.client


@pytest.fixture(scope="module")
def adata(prepared_synthetic, session_settings) -> ad.AnnData:
    return scanpy_log_normalised(prepared_synthetic["store"], session_settings)


@pytest.fixture(scope="module")
def values(adata) -> np.ndarray:
    return adata.X.toarray().astype(np.float64)


def child(key: str, name: str, cell_ids) -> dict:
    return cell_set(key, cell_ids) | {"name": name}


@pytest.fixture(scope="module")
def classes(prepared_synthetic, session_settings, synthetic_dataset) -> dict[str, list[dict]]:
    """This module's classes: `mk` the 8 generated clusters (the first 1000 cells of the
    first, so that no marker group is sampled); `mkover` overlapping children;
    `mkdup` children with repeated names; `mkfilter` a filter set and an empty one; `mkempty`
    children without cells."""
    labels = synthetic_dataset.cluster_labels
    cluster = {label: np.flatnonzero(labels == label)[:1000] for label in range(8)}
    classes = {
        "mk": [child(f"mk-{label}", name, cluster[label])
               for label, name in enumerate(synthetic_dataset.cluster_names)],
        "mkover": [child("mkover-a", "A", np.concatenate([cluster[3], cluster[6]])),
                   child("mkover-b", "B", np.concatenate([cluster[6], cluster[7]])),
                   child("mkover-c", "C", cluster[2])],
        "mkdup": [child("mkdup-0", "T", cluster[0]), child("mkdup-1", "T", cluster[1]),
                  child("mkdup-2", "B", cluster[2]), child("mkdup-3", "T.1", cluster[3])],
        "mkfilter": [child("mkfilter-half", "half", np.arange(2500)),
                     child("mkfilter-none", "none", [])],
        "mkempty": [child("mkempty-0", "nobody", [])],
    }  # fmt: skip
    for key, children in classes.items():
        store_hierarchy(
            session_settings,
            SYNTHETIC_EXPERIMENT,
            {"key": key, "name": key, "rootNode": True, "type": "cellSets", "children": children},
        )
    return classes


def dot_plot(genes: list[str], group_by: str, filter_by: dict, markers: int | None = None):
    return {"name": "DotPlot", "useMarkerGenes": markers is not None,
            "numberOfMarkers": markers or 3, "customGenesList": genes, "groupBy": group_by,
            "filterBy": filter_by}  # fmt: skip


ALL = {"group": "All", "key": "All"}
# The genes named in custom dot plots, by index.
NAMED = [0, 3, 7, 500]


def module_requests(gene_names: list[str]) -> dict[str, dict]:
    """Every request of the module by name."""
    named = [gene_names[index] for index in NAMED]
    return {
        "markers": {"name": "MarkerHeatmap", "nGenes": 3, "selectedCellSet": "mk"},
        "cellSetKey": {"name": "MarkerHeatmap", "nGenes": 3.0, "cellSetKey": "mk"},
        "downsampleSettings": {"name": "MarkerHeatmap", "nGenes": 3,
                               "downsampleSettings": {"selectedCellSet": "mk"}},
        "overlapping": {"name": "MarkerHeatmap", "nGenes": 4, "selectedCellSet": "mkover"},
        "empty class": {"name": "MarkerHeatmap", "nGenes": 5, "selectedCellSet": "mkempty"},
        "no class": {"name": "MarkerHeatmap", "nGenes": 5, "selectedCellSet": "no-such-class"},
        "no genes": {"name": "MarkerHeatmap", "nGenes": 0, "selectedCellSet": "mk"},
        "unnamed class": {"name": "MarkerHeatmap", "nGenes": 5},
        "named genes": dot_plot(
            [name.lower() for name in named] + ["NO-SUCH-GENE"], "mkdup", ALL
        ) | {"clusterNames": ["T", "T", "B", "T.1"]},
        "marker dots": dot_plot([], "mk", {"group": "mkfilter", "key": "mkfilter-half"}, 2),
        "one group": dot_plot(named[1:3], "mk", {"group": "mk", "key": "mk-3"}),
        "no cells": dot_plot(named[:1], "mk", {"group": "mkfilter", "key": "mkfilter-none"}),
        "no genes named": dot_plot(["NO-SUCH-GENE"], "mk", {"group": "all"}),
    }  # fmt: skip


@pytest.fixture(scope="module")
def answers(client, classes, adata):
    """`answers(name)`: the answer to the module's request `name`; all are sent when the
    module starts, so that they compute while the references do."""
    messages = {
        name: client.message(body, SYNTHETIC_EXPERIMENT)
        for name, body in module_requests(adata.var_names.tolist()).items()
    }
    for message in messages.values():
        client.send(message)
    return lambda name: client.answer(messages[name])


def labels_of(children: list[dict], n_cells: int, cells=None) -> np.ndarray:
    """Each cell's child (the last holding it), or NO_GROUP; only `cells` if given."""
    labels = np.full(n_cells, NO_GROUP)
    for index, node in enumerate(children):
        labels[node["cellIds"]] = index
    if cells is not None:
        outside = np.setdiff1d(np.arange(n_cells), cells)
        labels[outside] = NO_GROUP
    return labels


def reference_markers(values: np.ndarray, labels: np.ndarray, n_genes: int) -> list[int]:
    """The platform's marker genes: presto one-vs-rest among the grouped cells, its filters and
    sorts (no group here has more than 1000 cells, so none is sampled)."""
    present = [group for group in range(labels.max() + 1) if np.any(labels == group)]
    assert all(np.count_nonzero(labels == group) <= 1000 for group in present)
    compact = np.full(len(labels), NO_GROUP)
    for index, group in enumerate(present):
        compact[labels == group] = index
    return pandas_top_markers(presto_formula(values, compact), n_genes)


def test_marker_heatmap_names_each_clusters_top_markers(answers, adata, values, classes):
    answer = answers("markers")

    expected = reference_markers(values, labels_of(classes["mk"], adata.n_obs), 3)
    assert answer.result == {"orderedGeneNames": adata.var_names[expected].tolist()}
    assert 16 <= len(expected) <= 24  # most of the 8 clusters have 3 markers
    # The API's older bodies name the class otherwise.
    assert answers("cellSetKey").result == answer.result
    assert answers("downsampleSettings").result == answer.result


def test_marker_heatmap_overlapping_children_last_wins(answers, adata, values, classes):
    answer = answers("overlapping")

    labels = labels_of(classes["mkover"], adata.n_obs)
    # Cluster 6 is in A and B: it counts in B, the last.
    assert np.unique(labels[classes["mkover"][0]["cellIds"]]).tolist() == [0, 1]
    expected = reference_markers(values, labels, 4)
    assert answer.result == {"orderedGeneNames": adata.var_names[expected].tolist()}
    assert len(expected) > 4


@pytest.mark.parametrize(
    ("request_name", "code", "message"),
    [
        ("empty class", "R_WORKER_EMPTY_CELL_SET", "No cells found"),
        ("no class", "INVALID_INPUT", "no-such-class"),
        ("no genes", "INVALID_INPUT", "body.nGenes"),
        ("unnamed class", "INVALID_INPUT", "selectedCellSet"),
    ],
)
def test_marker_heatmap_errors(answers, request_name, code, message):
    response = answers(request_name).notification["response"]
    assert response["error"] is True and response["errorCode"] == code
    assert message in response["userMessage"]


def seurat_dot_plot(values: np.ndarray, groups: list[np.ndarray], genes: list[int]):
    """Seurat's DotPlot `avg.exp.scaled` and `pct.exp` (groups x genes) with numpy."""
    average = np.array([np.expm1(values[np.ix_(cells, genes)]).mean(axis=0) for cells in groups])
    percent = np.array([100 * (values[np.ix_(cells, genes)] > 0).mean(axis=0) for cells in groups])
    logged = np.log1p(average)
    if len(groups) == 1:
        return logged, percent
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = (logged - logged.mean(axis=0)) / logged.std(axis=0, ddof=1)
    return np.clip(scaled, -2.5, 2.5), percent


def assert_dot_plot_equals(result: dict, names: list[str], gene_names: list[str], expected):
    scaled, percent = expected
    assert set(result) == set(EMPTY_DOT_PLOT)
    assert result["cellSetsNames"] == sorted(names)
    assert result["geneNames"] == sorted(gene_names)
    entries = len(names) * len(gene_names)
    assert all(len(result[key]) == entries for key in ("cellSetsIdx", "geneNameIdx"))
    found = {}
    for group, gene, average, cells in zip(
        result["cellSetsIdx"], result["geneNameIdx"], result["avgExpression"],
        result["cellsPercentage"], strict=True,
    ):  # fmt: skip
        found[result["cellSetsNames"][group], result["geneNames"][gene]] = (average, cells)
    assert len(found) == entries
    for group, name in enumerate(names):
        for gene, gene_name in enumerate(gene_names):
            average, cells = found[name, gene_name]
            if np.isnan(scaled[group, gene]):
                assert average is None
            else:
                assert average == pytest.approx(scaled[group, gene], rel=1e-9, abs=1e-12)
            assert cells == pytest.approx(percent[group, gene], rel=1e-12)


def test_dot_plot_of_named_genes_with_repeated_group_names(answers, adata, values, classes):
    answer = answers("named genes")

    wanted = adata.var_names[NAMED].tolist()

    groups = [np.asarray(node["cellIds"]) for node in classes["mkdup"]]
    # R's make.unique: the second "T" skips "T.1", which a later child holds.
    names = ["T", "T.2", "B", "T.1"]
    expected = seurat_dot_plot(values, groups, NAMED)
    assert_dot_plot_equals(answer.result, names, wanted, expected)
    assert np.isfinite(expected[0]).all() and np.abs(expected[0]).max() > 0.5

    # scanpy's dot plot fractions of the same groups.
    cells = np.concatenate(groups)
    grouped = adata[cells].copy()
    grouped.obs["group"] = pd.Categorical(np.repeat(names, [len(g) for g in groups]))
    plot = sc.pl.dotplot(grouped, wanted, "group", expression_cutoff=0, return_fig=True)
    np.testing.assert_allclose(
        100 * plot.dot_size_df.loc[names, wanted].to_numpy(), expected[1], rtol=1e-12
    )


def test_dot_plot_of_markers_within_a_filter(answers, adata, values, classes):
    answer = answers("marker dots")

    half = np.arange(2500)
    labels = labels_of(classes["mk"], adata.n_obs, cells=half)
    markers = reference_markers(values, labels, 2)
    present = [group for group in range(8) if np.any(labels == group)]
    groups = [np.flatnonzero(labels == group) for group in present]
    names = [classes["mk"][group]["name"] for group in present]
    expected = seurat_dot_plot(values, groups, markers)
    assert_dot_plot_equals(answer.result, names, adata.var_names[markers].tolist(), expected)


def test_dot_plot_of_one_group_is_unscaled(answers, adata, values, classes):
    answer = answers("one group")

    cells = np.asarray(classes["mk"][3]["cellIds"])
    genes = NAMED[1:3]
    expected = seurat_dot_plot(values, [cells], genes)
    assert_dot_plot_equals(
        answer.result, [classes["mk"][3]["name"]], adata.var_names[genes].tolist(), expected
    )


@pytest.mark.parametrize("request_name", ["no cells", "no genes named"])
def test_dot_plot_with_nothing_to_show_is_empty_arrays(answers, request_name):
    assert answers(request_name).result == EMPTY_DOT_PLOT
