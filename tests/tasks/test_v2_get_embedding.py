"""GetEmbedding (Cellenics v2): PCA from the store; UMAP with the platform's 30 neighbours and
t-SNE equal to scanpy's and openTSNE's on the stored PCA, reporting their progress, computed once
per config; `useSaved` answers only what is saved."""

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from openTSNE import TSNE

from worker.compute.graph import TSNE_ITERATIONS, TSNE_THREADS
from worker.store.locations import zarr_store
from worker.tasks.base import TaskContext
from worker.tasks.get_embedding import V2_TASK, GetEmbeddingV2Body

EXPERIMENT = "shared-v3-h5"


@pytest.fixture(scope="module")
def x_pca(prepared_10x, session_settings) -> np.ndarray:
    url = prepared_10x["v3_h5"]["store"]
    return ad.read_zarr(zarr_store(url, session_settings.aws, read_only=True)).obsm["X_pca"]


def computed_on_dask(dask_client, settings, body: dict, topic: str) -> tuple[np.ndarray, list]:
    """The task run on a Dask worker as the loop runs it, with the progress it reported (as
    `(done, total, message)`)."""
    context = TaskContext.for_experiment(settings, EXPERIMENT, progress_topic=topic)
    task_body = GetEmbeddingV2Body.model_validate({"name": "GetEmbedding", **body})
    embedding = dask_client.submit(V2_TASK.compute, context, task_body, pure=False).result(240)
    events = [event for _, event in dask_client.get_events(topic)]
    return np.asarray(embedding), [(e["done"], e["total"], e["message"]) for e in events]


def saved(v2, body: dict) -> np.ndarray:
    answer = v2.result({"name": "GetEmbedding", "useSaved": True, **body}, EXPERIMENT)
    return np.array(answer, dtype=np.float32)


def test_cosine_umap_of_30_neighbours_equals_scanpys(v2, dask_client, session_settings, x_pca):
    body = {"type": "umap", "config": {"minimumDistance": 0.25, "distanceMetric": "cosine"}}
    never_computed = v2.error({"name": "GetEmbedding", "useSaved": True, **body}, EXPERIMENT)

    embedding, progress = computed_on_dask(dask_client, session_settings, body, "v2-umap")

    assert never_computed["errorCode"] == "INVALID_INPUT"
    assert "body.useSaved" in never_computed["userMessage"]
    reference = ad.AnnData(obsm={"X_pca": x_pca})
    sc.pp.neighbors(reference, n_neighbors=30, use_rep="X_pca", metric="cosine", random_state=0)
    sc.tl.umap(reference, min_dist=0.25, random_state=0)
    np.testing.assert_allclose(embedding, reference.obsm["X_umap"], atol=1e-4)
    # Its epochs (500 up to 10,000 cells) reported at the start and every tenth of them.
    assert progress == [(0, 1, "Finding neighbours")] + [
        (done, 500, "Computing the UMAP") for done in range(0, 501, 50)
    ]
    np.testing.assert_array_equal(saved(v2, body), embedding)
    again = v2.result({"name": "GetEmbedding", **body}, EXPERIMENT)
    np.testing.assert_array_equal(np.array(again, dtype=np.float32), embedding)


def test_tsne_equals_opentsnes_and_reports_its_iterations(v2, dask_client, session_settings, x_pca):
    body = {"type": "tsne", "config": {"perplexity": 20, "learningRate": 150}}

    embedding, progress = computed_on_dask(dask_client, session_settings, body, "v2-tsne")

    expected = TSNE(perplexity=20, learning_rate=150, random_state=0, n_jobs=TSNE_THREADS).fit(
        x_pca
    )
    np.testing.assert_allclose(embedding, expected, atol=1e-3)
    assert progress == [
        (done, TSNE_ITERATIONS, "Computing the t-SNE")
        for done in range(50, TSNE_ITERATIONS + 1, 50)
    ]
    np.testing.assert_array_equal(saved(v2, body), embedding)


def test_pca_is_the_first_two_components_each_cell_a_pair(v2, x_pca):
    for body in ({"type": "pca"}, {"type": "pca", "useSaved": True}):
        pairs = v2.result({"name": "GetEmbedding", **body}, EXPERIMENT)
        assert len(pairs) == len(x_pca) and {len(pair) for pair in pairs} == {2}
        np.testing.assert_array_equal(np.array(pairs, dtype=np.float32), x_pca[:, :2])


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"type": "images"}, "body.type"),
        ({"type": "umap", "config": {"minimumDistance": -1, "distanceMetric": "cosine"}},
         "body.config.minimumDistance"),
        ({"type": "tsne", "config": {"perplexity": 0, "learningRate": 10}},
         "body.config.perplexity"),
    ],
)  # fmt: skip
def test_what_cannot_be_embedded_is_invalid_input(v2, body, named):
    error = v2.error({"name": "GetEmbedding", **body}, EXPERIMENT)
    assert error["errorCode"] == "INVALID_INPUT"
    assert named in error["userMessage"]
