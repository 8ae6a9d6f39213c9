"""GeneExpression through the real queue, checked against scanpy on the same store."""

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

from tests.conftest import SYNTHETIC_EXPERIMENT, result_body
from tests.tasks.helpers import cell_set, scanpy_log_normalised, store_hierarchy
from worker.store.cell_sets import cluster_hierarchy


@pytest.fixture(scope="module")
def synthetic_log_normalised(prepared_synthetic, session_settings) -> ad.AnnData:
    return scanpy_log_normalised(prepared_synthetic["store"], session_settings)


@pytest.fixture(scope="module")
def clusters(prepared_synthetic, session_settings, synthetic_dataset) -> dict:
    """The generator's clusters stored as the hierarchy `ge-test`, with an empty child last."""
    hierarchy = cluster_hierarchy("ge-test", "Generated", synthetic_dataset.cluster_labels)
    hierarchy["children"].append(cell_set("ge-test-empty", []))
    store_hierarchy(session_settings, SYNTHETIC_EXPERIMENT, hierarchy)
    return {child["key"]: np.array(child["cellIds"], dtype=int) for child in hierarchy["children"]}


def ask(worker, settings, body: dict, experiment_id: str = SYNTHETIC_EXPERIMENT) -> tuple:
    response = worker.ask({"name": "GeneExpression", **body}, experiment_id=experiment_id)
    return response, result_body(response, settings)


def assert_summary(entry: dict, values: np.ndarray) -> None:
    values = values.astype(np.float64)
    np.testing.assert_allclose(
        [entry["min"], entry["max"], entry["mean"], entry["stdev"]],
        [values.min(), values.max(), values.mean(), values.std()],
        rtol=1e-6,
        atol=1e-6,
    )


def test_values_equal_scanpy_in_selected_cells(
    session_worker, session_settings, clusters, synthetic_log_normalised
):
    adata = synthetic_log_normalised
    keys = ["ge-test-3", "ge-test-0"]
    cell_ids = np.union1d(clusters["ge-test-3"], clusters["ge-test-0"])
    by_id = adata.var["gene_ids"].iloc[10]
    genes = ["CST3", "NO-SUCH-GENE", by_id, "TGFB1", "CST3"]

    response, body = ask(session_worker, session_settings, {"genes": genes, "cellSets": keys})

    assert response["response"] == {"cacheable": True, "error": False}
    assert body["cells"] == adata.obs["barcode"].iloc[cell_ids].tolist()
    assert [entry["geneName"] for entry in body["data"]] == ["CST3", by_id, "TGFB1"]
    assert body["notFound"] == ["NO-SUCH-GENE"]
    expected = adata[cell_ids, ["CST3", adata.var_names[10], "TGFB1"]].X.toarray()
    for entry, column in zip(body["data"], expected.T, strict=True):
        np.testing.assert_allclose(entry["expression"], column, rtol=1e-6, atol=0)
        assert_summary(entry, column)
    assert_summary(body, expected)


def test_scale_equals_scanpy_scale_over_all_cells(
    session_worker, session_settings, clusters, synthetic_log_normalised
):
    scaled = synthetic_log_normalised[:, ["CST3", "MT-CO1", "TGFB1"]].copy()
    scaled.X = scaled.X.toarray()
    sc.pp.scale(scaled, max_value=10)
    cluster = "ge-test-2"
    cell_ids = clusters[cluster]

    _, everywhere = ask(session_worker, session_settings, {"genes": ["CST3"], "scale": True})
    _, in_cluster = ask(
        session_worker,
        session_settings,
        {"genes": ["CST3", "MT-CO1", "TGFB1"], "cellSets": [cluster], "scale": True},
    )

    assert len(everywhere["cells"]) == scaled.n_obs
    np.testing.assert_allclose(
        everywhere["data"][0]["expression"], scaled.X[:, 0], rtol=1e-5, atol=1e-5
    )
    for entry, column in zip(in_cluster["data"], scaled.X[cell_ids].T, strict=True):
        np.testing.assert_allclose(entry["expression"], column, rtol=1e-5, atol=1e-5)
        assert -10 <= entry["min"] <= entry["max"] <= 10


def test_gene_ids_match_on_real_cell_ranger_data(session_worker, session_settings, prepared_10x):
    adata = scanpy_log_normalised(prepared_10x["v3_h5"]["store"], session_settings)
    expressed = np.flatnonzero(adata.var["n_cells"].to_numpy() > 100)[:2]
    gene_ids = adata.var["gene_ids"].iloc[expressed].tolist()

    _, body = ask(session_worker, session_settings, {"genes": gene_ids}, "shared-v3-h5")

    assert body["cells"] == adata.obs["barcode"].tolist()
    for entry, column in zip(body["data"], adata.X[:, expressed].toarray().T, strict=True):
        np.testing.assert_allclose(entry["expression"], column, rtol=1e-6, atol=0)


def test_no_gene_found_and_empty_selection_give_null_statistics(
    session_worker, session_settings, prepared_synthetic, clusters
):
    statistics = ("min", "max", "mean", "stdev")
    _, no_genes = ask(session_worker, session_settings, {"genes": ["NOPE", "NADA"]})
    assert no_genes["data"] == [] and no_genes["notFound"] == ["NOPE", "NADA"]
    assert len(no_genes["cells"]) == prepared_synthetic["cells"]
    assert [no_genes[key] for key in statistics] == [None] * 4

    _, no_cells = ask(
        session_worker, session_settings, {"genes": ["CST3"], "cellSets": ["ge-test-empty"]}
    )
    assert no_cells["cells"] == [] and no_cells["data"][0]["expression"] == []
    assert [no_cells["data"][0][key] for key in statistics] == [None] * 4
    assert [no_cells[key] for key in statistics] == [None] * 4


@pytest.mark.parametrize(
    ("body", "experiment_id", "code", "named"),
    [
        ({"genes": ["CST3"], "cellSets": ["no-such-set"]}, SYNTHETIC_EXPERIMENT,
         "CellSetNotFound", "no-such-set"),
        ({"genes": []}, SYNTHETIC_EXPERIMENT, "InvalidRequest", "body.genes"),
        ({"genes": ["G"] * 1001}, SYNTHETIC_EXPERIMENT, "InvalidRequest", "body.genes"),
        ({"genes": ["CST3"], "scale": "maybe"}, SYNTHETIC_EXPERIMENT, "InvalidRequest",
         "body.scale"),
        ({"genes": ["CST3"]}, "no-such-experiment", "ExperimentNotFound", "no-such-experiment"),
    ],
)  # fmt: skip
def test_errors(
    session_worker, session_settings, prepared_synthetic, body, experiment_id, code, named
):
    response, result = ask(session_worker, session_settings, body, experiment_id)
    assert response["response"] == {"cacheable": False, "error": True}
    assert result["error"]["code"] == code
    assert named in result["error"]["message"]
