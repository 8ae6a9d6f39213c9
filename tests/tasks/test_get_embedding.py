"""GetEmbedding through the real queue: PCA read from the store; UMAP and t-SNE equal to
scanpy's and openTSNE's on the stored PCA, computed once and then read from the store."""

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import zarr
from openTSNE import TSNE

from tests.conftest import make_request, result_body
from worker.compute.graph import TSNE_THREADS
from worker.store.locations import zarr_store

EXPERIMENT = "shared-v3-h5"


def read_store(prepared_10x, settings) -> ad.AnnData:
    url = prepared_10x["v3_h5"]["store"]
    return ad.read_zarr(zarr_store(url, settings.aws, read_only=True))


@pytest.fixture(scope="module")
def stored(prepared_10x, session_settings) -> ad.AnnData:
    return read_store(prepared_10x, session_settings)


def ask(session_worker, body: dict, experiment_id: str = EXPERIMENT) -> dict:
    return session_worker.ask({"name": "GetEmbedding", **body}, experiment_id, timeout_s=180)


def embedding_of(response: dict, settings) -> np.ndarray:
    assert response["response"] == {"cacheable": True, "error": False}, response["results"]
    return np.asarray(result_body(response, settings), dtype=np.float32)


def cached_array(prepared_10x, settings, element: str) -> zarr.Array:
    url = prepared_10x["v3_h5"]["store"]
    return zarr.open_array(zarr_store(url, settings.aws, read_only=True), path=element, mode="r")


def error_of(response: dict, settings) -> dict:
    assert response["response"] == {"cacheable": False, "error": True}
    return result_body(response, settings)["error"]


def test_pca_is_the_first_two_stored_components(session_worker, session_settings, stored):
    embedding = embedding_of(ask(session_worker, {"type": "pca"}), session_settings)
    np.testing.assert_array_equal(embedding, stored.obsm["X_pca"][:, :2])


def test_umap_equals_scanpy_and_the_second_request_only_reads(
    session_worker, session_settings, prepared_10x, stored
):
    first = embedding_of(ask(session_worker, {"type": "umap"}), session_settings)
    element = "obsm/X_umap__euclidean__min_dist_0.3"
    completed_at = cached_array(prepared_10x, session_settings, element).attrs["completed_at"]

    reference = ad.AnnData(
        obsm={"X_pca": stored.obsm["X_pca"]},
        obsp={"connectivities": stored.obsp["connectivities"]},
        uns={
            "neighbors": {
                "connectivities_key": "connectivities",
                "params": {"method": "umap", "use_rep": "X_pca", "metric": "euclidean"},
            }
        },
    )
    sc.tl.umap(reference, min_dist=0.3, random_state=0)
    assert first.shape == (stored.n_obs, 2)
    np.testing.assert_allclose(first, reference.obsm["X_umap"], atol=1e-4)

    config = {"minimumDistance": 0.3, "distanceMetric": "euclidean"}
    second = embedding_of(ask(session_worker, {"type": "umap", "config": config}), session_settings)
    np.testing.assert_array_equal(second, first)
    cached = cached_array(prepared_10x, session_settings, element)
    assert cached.attrs["completed_at"] == completed_at
    np.testing.assert_array_equal(cached[...], first)


def test_cosine_umap_is_cached_apart(session_worker, session_settings, prepared_10x):
    config = {"minimumDistance": 0.3, "distanceMetric": "cosine"}
    cosine = embedding_of(ask(session_worker, {"type": "umap", "config": config}), session_settings)
    assert cosine.shape == (1107, 2) and np.isfinite(cosine).all()
    cached = cached_array(prepared_10x, session_settings, "obsm/X_umap__cosine__min_dist_0.3")
    np.testing.assert_array_equal(cached[...], cosine)
    euclidean = cached_array(prepared_10x, session_settings, "obsm/X_umap__euclidean__min_dist_0.3")
    assert not np.allclose(cached[...], euclidean[...])


def test_concurrent_identical_tsne_requests_agree_with_opentsne(
    session_worker, session_settings, prepared_10x, stored
):
    body = {
        "name": "GetEmbedding",
        "type": "tsne",
        "config": {"perplexity": 10, "learningRate": 100},
    }
    requests = [make_request(body, EXPERIMENT) for _ in range(2)]
    for request in requests:
        session_worker.send(request)
    first, second = (
        embedding_of(session_worker.response(request["uuid"], 180), session_settings)
        for request in requests
    )
    np.testing.assert_array_equal(first, second)
    expected = TSNE(perplexity=10, learning_rate=100, random_state=0, n_jobs=TSNE_THREADS).fit(
        stored.obsm["X_pca"]
    )
    np.testing.assert_allclose(first, expected, atol=1e-3)
    element = "obsm/X_tsne__perplexity_10.0__learning_rate_100.0"
    cached = cached_array(prepared_10x, session_settings, element)
    assert "completed_at" in cached.attrs
    np.testing.assert_array_equal(cached[...], first)


def test_the_store_stays_a_valid_anndata_after_caching(session_settings, prepared_10x):
    # Cached arrays are outside the consolidated metadata: anndata reads the build's elements.
    stored = read_store(prepared_10x, session_settings)
    assert list(stored.obsm) == ["X_pca"]
    assert stored.obs.columns.tolist() == [
        "barcode", "sample", "total_counts", "n_genes", "percent_mito",
    ]  # fmt: skip


def test_too_few_cells_for_umap_and_tsne(session_worker, session_settings, prepared_10x):
    pca = embedding_of(ask(session_worker, {"type": "pca"}, "shared-v2-mtx"), session_settings)
    assert pca.shape == (12, 2)
    for kind in ("umap", "tsne"):
        error = error_of(ask(session_worker, {"type": kind}, "shared-v2-mtx"), session_settings)
        assert error["code"] == "InvalidRequest"
        assert "at least 30 cells" in error["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "diffmap"}, "body.type"),
        ({"type": "umap", "config": {"minimumDistance": 1.5}}, "body.config.minimumDistance"),
        ({"type": "umap", "config": {"distanceMetric": "manhattan"}}, "body.config.distanceMetric"),
        ({"type": "umap", "config": {"perplexity": 30}}, "body.config.perplexity"),
        ({"type": "tsne", "config": {"perplexity": 1e9}}, "body.config.perplexity"),
        ({"type": "tsne", "config": {"learningRate": -1}}, "body.config.learningRate"),
        ({"type": "tsne", "config": "fast"}, "body.config"),
    ],
)
def test_invalid_bodies_name_the_field(session_worker, session_settings, body, field):
    error = error_of(ask(session_worker, body), session_settings)
    assert error["code"] == "InvalidRequest"
    assert field in error["message"]


def test_unknown_experiment(session_worker, session_settings):
    error = error_of(ask(session_worker, {"type": "pca"}, "no-such-experiment"), session_settings)
    assert error["code"] == "ExperimentNotFound"
