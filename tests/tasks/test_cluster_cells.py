"""ClusterCells through the real queue: Leiden and Louvain partitions of the stored neighbour
graph equal scanpy's, and the hierarchy replaces or joins the stored cell sets."""

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from sklearn.metrics import adjusted_rand_score

from tests.conftest import SYNTHETIC_EXPERIMENT, result_body
from tests.tasks.helpers import read_hierarchies
from worker.compute.graph import igraph_random_state
from worker.store.locations import zarr_store


@pytest.fixture(scope="module")
def stored(prepared_synthetic, session_settings) -> ad.AnnData:
    return ad.read_zarr(
        zarr_store(prepared_synthetic["store"], session_settings.aws, read_only=True)
    )


def ask(session_worker, experiment_id: str = SYNTHETIC_EXPERIMENT, **fields) -> dict:
    return session_worker.ask({"name": "ClusterCells", **fields}, experiment_id, timeout_s=120)


def hierarchy_of(response: dict, settings) -> dict:
    assert response["response"] == {"cacheable": False, "error": False}, response["results"]
    return result_body(response, settings)


def error_of(response: dict, settings) -> dict:
    assert response["response"] == {"cacheable": False, "error": True}
    return result_body(response, settings)["error"]


def stored_hierarchies(settings, experiment_id: str = SYNTHETIC_EXPERIMENT) -> dict[str, dict]:
    hierarchies = read_hierarchies(settings, experiment_id)
    return {hierarchy["key"]: hierarchy for hierarchy in hierarchies}


def labels_of(hierarchy: dict, n_cells: int) -> np.ndarray:
    """The cluster index of each cell; every cell in exactly one cluster."""
    labels = np.full(n_cells, -1)
    for index, child in enumerate(hierarchy["children"]):
        assert (labels[child["cellIds"]] == -1).all()
        labels[child["cellIds"]] = index
    assert (labels >= 0).all()
    return labels


def assert_numbered_largest_first(hierarchy: dict, key: str, name: str) -> None:
    assert (hierarchy["key"], hierarchy["name"], hierarchy["rootNode"]) == (key, name, True)
    children = hierarchy["children"]
    assert [child["key"] for child in children] == [f"{key}-{i}" for i in range(len(children))]
    assert [child["name"] for child in children] == [f"Cluster {i}" for i in range(len(children))]
    sizes = [len(child["cellIds"]) for child in children]
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize(("resolution", "key"), [(0.5, "test-leiden-low"), (1.5, "test-leiden")])
def test_leiden_equals_scanpy(session_worker, session_settings, stored, resolution, key):
    config = {"resolution": resolution}
    response = ask(
        session_worker, type="leiden", cellSetKey=key, cellSetName="Leiden", config=config
    )
    hierarchy = hierarchy_of(response, session_settings)
    assert_numbered_largest_first(hierarchy, key, "Leiden")
    sc.tl.leiden(
        stored,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=0,
        resolution=resolution,
        obsp="connectivities",
        key_added="reference",
    )
    assert len(hierarchy["children"]) == stored.obs["reference"].nunique() > 2
    assert adjusted_rand_score(labels_of(hierarchy, stored.n_obs), stored.obs["reference"]) == 1
    assert stored_hierarchies(session_settings)[key] == hierarchy


def test_louvain_equals_scanpy_and_the_prepared_clusters(session_worker, session_settings, stored):
    response = ask(
        session_worker,
        type="louvain",
        cellSetKey="test-louvain",
        cellSetName="Louvain again",
        config={"resolution": 1.0},
    )
    hierarchy = hierarchy_of(response, session_settings)
    assert_numbered_largest_first(hierarchy, "test-louvain", "Louvain again")
    # scanpy's igraph flavour passes no seed, weights or resolution to igraph unless given
    # (tests/compute/test_graph.py): seed it as we do, with the weights, at resolution 1.
    with igraph_random_state(0):
        sc.tl.louvain(
            stored, flavor="igraph", use_weights=True, obsp="connectivities", key_added="reference"
        )
    labels = labels_of(hierarchy, stored.n_obs)
    assert adjusted_rand_score(labels, stored.obs["reference"]) == 1
    # PrepareExperiment's clusters are the same kernel at resolution 1: the same cells.
    prepared = stored_hierarchies(session_settings)["louvain"]
    np.testing.assert_array_equal(labels, labels_of(prepared, stored.n_obs))


def test_a_key_is_replaced_and_read_back(session_worker, session_settings, stored):
    before = stored_hierarchies(session_settings)
    for resolution in (0.3, 1.2):
        hierarchy = hierarchy_of(
            ask(
                session_worker,
                type="leiden",
                cellSetKey="test-replaced",
                cellSetName=f"At {resolution}",
                config={"resolution": resolution},
            ),
            session_settings,
        )
    after = stored_hierarchies(session_settings)
    assert after["test-replaced"] == hierarchy
    assert {key: after[key] for key in before if key != "test-replaced"} == {
        key: value for key, value in before.items() if key != "test-replaced"
    }
    # A following request reads the new cell sets.
    largest = hierarchy["children"][0]
    response = session_worker.ask(
        {"name": "GeneExpression", "genes": ["CD3D"], "cellSets": ["test-replaced-0"]},
        SYNTHETIC_EXPERIMENT,
    )
    assert response["response"]["error"] is False, response["results"]
    cells = result_body(response, session_settings)["cells"]
    assert cells == stored.obs["barcode"].to_numpy()[largest["cellIds"]].tolist()


def test_too_few_cells_make_one_cluster(session_worker, session_settings, prepared_10x):
    response = ask(
        session_worker, "shared-v2-mtx", type="louvain", cellSetKey="test-tiny", cellSetName="Tiny"
    )
    hierarchy = hierarchy_of(response, session_settings)
    assert [child["cellIds"] for child in hierarchy["children"]] == [list(range(12))]
    assert stored_hierarchies(session_settings, "shared-v2-mtx")["test-tiny"] == hierarchy


def test_a_key_clashing_with_another_cell_set_is_refused(session_worker, session_settings, stored):
    before = stored_hierarchies(session_settings)
    response = ask(session_worker, type="leiden", cellSetKey="louvain-0", cellSetName="Clash")
    error = error_of(response, session_settings)
    assert error["code"] == "InvalidRequest" and "body.cellSetKey" in error["message"]
    assert stored_hierarchies(session_settings) == before


VALID = {"type": "leiden", "cellSetKey": "test-invalid", "cellSetName": "Invalid"}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"type": "kmeans"}, "body.type"),
        ({"cellSetKey": "../cell-sets"}, "body.cellSetKey"),
        ({"cellSetKey": "k" * 65}, "body.cellSetKey"),
        ({"cellSetName": ""}, "body.cellSetName"),
        ({"config": {"resolution": 2.5}}, "body.config.resolution"),
        ({"config": {"resolution": -0.1}}, "body.config.resolution"),
        ({"config": {"resolution": 1, "iterations": 1000}}, "body.config.iterations"),
    ],
)
def test_invalid_bodies_name_the_field(session_worker, session_settings, fields, field):
    error = error_of(ask(session_worker, **(VALID | fields)), session_settings)
    assert error["code"] == "InvalidRequest"
    assert field in error["message"]


def test_unknown_experiment(session_worker, session_settings):
    error = error_of(ask(session_worker, "no-such-experiment", **VALID), session_settings)
    assert error["code"] == "ExperimentNotFound"
