"""MarkerHeatmap through the real queue, checked against scanpy's one-vs-rest markers."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from tests.conftest import SYNTHETIC_EXPERIMENT, result_body
from tests.tasks.helpers import cell_set, scanpy_log_normalised, store_hierarchy
from worker.store.cell_sets import cluster_hierarchy

N_CLUSTERS = 8


@pytest.fixture(scope="module")
def adata(prepared_synthetic, session_settings) -> ad.AnnData:
    return scanpy_log_normalised(prepared_synthetic["store"], session_settings)


@pytest.fixture(scope="module")
def labels(prepared_synthetic, session_settings, synthetic_dataset) -> np.ndarray:
    """The generated clusters stored as the hierarchy `mh-test`, an empty child among them."""
    labels = synthetic_dataset.cluster_labels
    hierarchy = cluster_hierarchy("mh-test", "Generated", labels)
    hierarchy["children"].insert(2, cell_set("mh-test-empty", []))
    store_hierarchy(session_settings, SYNTHETIC_EXPERIMENT, hierarchy)
    return labels


def ask(worker, settings, body: dict) -> tuple:
    response = worker.ask({"name": "MarkerHeatmap", **body}, experiment_id=SYNTHETIC_EXPERIMENT)
    return response, result_body(response, settings)


def scanpy_markers(adata: ad.AnnData, labels: np.ndarray, n_genes: int) -> list[str]:
    """Each cluster's top `n_genes` by scanpy's Wilcoxon score (one against the rest), ties in
    gene order, first cluster first, each gene once."""
    adata = adata.copy()
    adata.obs["cluster"] = pd.Categorical(labels.astype(str))
    sc.tl.rank_genes_groups(
        adata, "cluster", method="wilcoxon", use_raw=False, tie_correct=False,
        n_genes=adata.n_vars,
    )  # fmt: skip
    ranked = adata.uns["rank_genes_groups"]
    markers = []
    for cluster in ranked["names"].dtype.names:
        scores = pd.Series(ranked["scores"][cluster], index=ranked["names"][cluster])
        by_score = scores.reindex(adata.var_names).sort_values(ascending=False, kind="stable")
        markers.extend(by_score.index[:n_genes])
    return list(dict.fromkeys(markers))


def test_markers_and_sampled_cells_equal_scanpy(session_worker, session_settings, adata, labels):
    response, body = ask(
        session_worker,
        session_settings,
        {"nGenes": 5, "type": "louvain", "config": {"resolution": 0.8}, "cellSetKey": "mh-test",
         "maxCells": 1000},
    )  # fmt: skip

    assert response["response"] == {"cacheable": True, "error": False}
    assert body["order"] == scanpy_markers(adata, labels, 5)
    cell_order = np.array(body["cellOrder"])
    assert len(cell_order) == 1000 and len(np.unique(cell_order)) == 1000
    sampled_labels = labels[cell_order]
    assert np.all(np.diff(sampled_labels) >= 0)  # grouped by cluster, in the hierarchy's order
    sizes = np.bincount(labels, minlength=N_CLUSTERS)
    sampled_sizes = np.bincount(sampled_labels, minlength=N_CLUSTERS)
    assert np.all(np.abs(sampled_sizes - sizes * 1000 / len(labels)) < 1)
    for cluster in range(N_CLUSTERS):
        in_cluster = cell_order[sampled_labels == cluster]
        assert np.all(np.diff(in_cluster) > 0)
        # evenly spread over the cluster's cells
        positions = np.searchsorted(np.flatnonzero(labels == cluster), in_cluster)
        assert np.ptp(np.diff(positions)) <= 1

    assert list(body["data"]) == body["order"]
    expected = adata[cell_order, body["order"]].X.toarray()
    for gene, column in zip(body["order"], expected.T, strict=True):
        entry = body["data"][gene]
        np.testing.assert_allclose(entry["expression"], column, rtol=1e-6, atol=0)
        np.testing.assert_allclose(
            [entry["min"], entry["max"], entry["mean"], entry["stdev"]],
            [column.min(), column.max(), column.mean(), column.std()],
            rtol=1e-6,
        )


def test_small_hierarchy_shows_all_its_cells(session_worker, session_settings, adata, labels):
    """Its rest is its own other cells; a cell in two children counts in the first."""
    children = [
        np.flatnonzero(labels == label)[:size] for label, size in ((3, 90), (0, 60), (1, 40))
    ]
    shared_cell = children[0][0]
    hierarchy = {
        "key": "mh-small", "name": "Small", "rootNode": True, "type": "cellSets",
        "children": [
            cell_set("mh-small-0", children[0]),
            cell_set("mh-small-1", [*children[1], shared_cell]),
            cell_set("mh-small-2", children[2]),
        ],
    }  # fmt: skip
    store_hierarchy(session_settings, SYNTHETIC_EXPERIMENT, hierarchy)

    _, body = ask(
        session_worker, session_settings, {"nGenes": 3, "cellSetKey": "mh-small", "maxCells": 500}
    )

    cells = np.concatenate(children)
    small_labels = np.repeat(np.arange(3), [len(child) for child in children])
    assert body["cellOrder"] == cells.tolist()
    assert body["order"] == scanpy_markers(adata[cells], small_labels, 3)


@pytest.mark.parametrize(
    ("body", "code", "named"),
    [
        ({"cellSetKey": "no-such-hierarchy"}, "CellSetNotFound", "no-such-hierarchy"),
        ({"cellSetKey": "mh-test-0"}, "CellSetNotFound", "mh-test-0"),
        ({"nGenes": 0}, "InvalidRequest", "body.nGenes"),
        ({"maxCells": 10**9}, "InvalidRequest", "body.maxCells"),
        ({"type": "kmeans"}, "InvalidRequest", "body.type"),
        ({"config": {"resolution": 3}}, "InvalidRequest", "body.config.resolution"),
    ],
)
def test_errors(session_worker, session_settings, labels, body, code, named):
    response, result = ask(session_worker, session_settings, {"cellSetKey": "mh-test"} | body)
    assert response["response"] == {"cacheable": False, "error": True}
    assert result["error"]["code"] == code
    assert named in result["error"]["message"]
