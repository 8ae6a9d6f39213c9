"""ClusterCells and GetExpressionCellSets (Cellenics v2) through the v2 path: the cell set
changes reach our stand-in for the platform's API as its R worker PATCHes them, with the
request's Authorization; the stored cell sets change accordingly; the update is broadcast.
Clusters against scanpy's; expression sets against scanpy's log-normalised values."""

import uuid

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from sklearn.metrics import adjusted_rand_score

from tests.conftest import SYNTHETIC_EXPERIMENT
from tests.tasks.helpers import scanpy_log_normalised
from tests.tasks.v2_harness import AUTHORIZATION, cell_sets_restored
from worker.store.cell_sets import PALETTE


@pytest.fixture(scope="module", autouse=True)
def cell_sets_as_they_were(session_settings, prepared_synthetic):
    with cell_sets_restored(session_settings, SYNTHETIC_EXPERIMENT):
        yield


@pytest.fixture(scope="module")
def synthetic(prepared_synthetic, session_settings) -> ad.AnnData:
    adata = scanpy_log_normalised(prepared_synthetic["store"], session_settings)
    adata.X = adata.X.toarray()
    return adata


def broadcast_change(v2, body: dict) -> tuple[list, list[dict]]:
    """Send a request that changes the cell sets; its PATCH's operations and the classes after."""
    patches = len(v2.api.patches)
    answer = v2.ask(body, SYNTHETIC_EXPERIMENT, request_props={"broadcast": True})
    response = answer.notification["response"]
    assert response["error"] is False and response["cacheable"] is False, response
    assert answer.notification in v2.broadcasts(SYNTHETIC_EXPERIMENT)
    (patch,) = v2.api.patches[patches:]
    assert (patch.experiment_id, patch.authorization) == (SYNTHETIC_EXPERIMENT, AUTHORIZATION)
    return patch.operations, v2.cell_sets(SYNTHETIC_EXPERIMENT)


def labels_of(clusters: dict, n_cells: int) -> np.ndarray:
    labels = np.full(n_cells, -1)
    for index, child in enumerate(clusters["children"]):
        labels[child["cellIds"]] = index
    assert (labels >= 0).all()
    return labels


def assert_the_platforms_class(clusters: dict, method: str) -> None:
    assert {key: clusters[key] for key in ("key", "name", "rootNode", "type")} == {
        "key": "louvain", "name": f"{method} clusters", "rootNode": True, "type": "cellSets",
    }  # fmt: skip
    for index, child in enumerate(clusters["children"]):
        assert {key: child[key] for key in ("key", "name", "rootNode", "type", "color")} == {
            "key": f"{method}-{index}", "name": f"Cluster {index}", "rootNode": False,
            "type": "cellSets", "color": PALETTE[index % len(PALETTE)],
        }  # fmt: skip


def test_clusters_replace_the_louvain_class_first(v2, synthetic):
    before = v2.cell_sets(SYNTHETIC_EXPERIMENT)
    body = {"name": "ClusterCells", "cellSetName": "Louvain clusters", "cellSetKey": "louvain"}

    louvain_operations, after_louvain = broadcast_change(
        v2, body | {"type": "louvain", "config": {"resolution": 1}}
    )
    leiden_operations, after_leiden = broadcast_change(
        v2, body | {"type": "leiden", "config": {"resolution": 0.5}}
    )

    remove = {"$match": {"query": '$[?(@.key == "louvain")]', "value": {"$remove": True}}}
    assert louvain_operations == [remove, {"$prepend": after_louvain[0]}]
    assert leiden_operations == [remove, {"$prepend": after_leiden[0]}]
    others = [root for root in before if root["key"] != "louvain"]
    assert after_louvain[1:] == others and after_leiden[1:] == others
    # Louvain at resolution 1 is the kernel PrepareExperiment ran: the same cells.
    assert_the_platforms_class(after_louvain[0], "louvain")
    prepared = next(root for root in before if root["key"] == "louvain")
    assert [child["cellIds"] for child in after_louvain[0]["children"]] == [
        child["cellIds"] for child in prepared["children"]
    ]
    assert_the_platforms_class(after_leiden[0], "leiden")
    sc.tl.leiden(synthetic, flavor="igraph", n_iterations=2, directed=False, random_state=0,
                 resolution=0.5, obsp="connectivities", key_added="reference")  # fmt: skip
    labels = labels_of(after_leiden[0], synthetic.n_obs)
    assert labels.max() + 1 == synthetic.obs["reference"].nunique() > 2
    assert adjusted_rand_score(labels, synthetic.obs["reference"]) == 1


def expression_set(genes_config: list[dict]) -> dict:
    return {"name": "GetExpressionCellSets", "genesConfig": genes_config}


def test_expression_sets_are_added_to_the_scratchpad(v2, synthetic):
    values = synthetic[:, ["CST3", "LYZ", "MT-CO1"]].X
    first = [{"geneName": "CST3", "comparisonType": "greaterThan", "thresholdValue": 0.5},
             {"geneName": "LYZ", "comparisonType": "lessThan", "thresholdValue": 1}]  # fmt: skip
    second = [{"geneName": "MT-CO1", "comparisonType": "greaterThan", "thresholdValue": 0.00001}]
    assert all(root["key"] != "scratchpad" for root in v2.cell_sets(SYNTHETIC_EXPERIMENT))

    added_operations, after_added = broadcast_change(v2, expression_set(first))
    inserted_operations, after_inserted = broadcast_change(v2, expression_set(second))

    # No scratchpad class yet: one is added, holding the set; then sets are inserted in it.
    scratchpad = after_inserted[-1]
    first_set, second_set = scratchpad["children"]
    assert added_operations == [{"$append": after_added[-1]}]
    assert after_added[-1] == {"key": "scratchpad", "name": "Custom cell sets", "rootNode": True,
                               "type": "cellSets", "children": [first_set]}  # fmt: skip
    assert inserted_operations == [
        {"$match": {"query": '$[?(@.key == "scratchpad")]',
                    "value": {"children": [{"$insert": {"index": "-", "value": second_set}}]}}}
    ]  # fmt: skip
    expected_first = np.flatnonzero((values[:, 0] > 0.5) & (values[:, 1] < 1)).tolist()
    expected_second = np.flatnonzero(values[:, 2] > 0.00001).tolist()
    assert 0 < len(expected_first) < synthetic.n_obs
    for cell_set, name, cell_ids in (
        (first_set, "CST3>0.5, LYZ<1", expected_first),
        (second_set, "MT-CO1>1e-05", expected_second),
    ):
        assert set(cell_set) == {"key", "name", "rootNode", "color", "cellIds"}
        assert uuid.UUID(cell_set["key"]).version == 1
        assert (cell_set["name"], cell_set["rootNode"]) == (name, False)
        assert cell_set["color"] in PALETTE
        assert cell_set["cellIds"] == cell_ids


@pytest.mark.parametrize(
    ("genes_config", "code", "message"),
    [
        ([{"geneName": "cst3", "comparisonType": "greaterThan", "thresholdValue": 0}],
         "R_WORKER_EMPTY_CELL_SET",
         "Requested ExpressionCellSet with gene name(s) that are not present."),
        ([{"geneName": "CST3", "comparisonType": "greaterThan", "thresholdValue": 100}],
         "R_WORKER_EMPTY_CELL_SET", "No cells match requested filters."),
        ([{"geneName": "CST3", "thresholdValue": 1}], "INVALID_INPUT",
         "body.genesConfig.0.comparisonType"),
    ],
)  # fmt: skip
def test_errors_change_nothing(v2, genes_config, code, message):
    patches = len(v2.api.patches)
    error = v2.error(expression_set(genes_config), SYNTHETIC_EXPERIMENT)
    assert error["errorCode"] == code and message in error["userMessage"]
    assert len(v2.api.patches) == patches
