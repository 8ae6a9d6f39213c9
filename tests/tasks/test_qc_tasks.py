"""GetMitochondrialContent and GetDoubletScore through the real queue: percentages against the
plain formula, doublet scores against scanpy's Scrublet on each sample's stored counts (a large
sample's against scanpy's Scrublet per batch)."""

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import zarr

from tests.conftest import (
    SOURCE_BUCKET,
    SYNTHETIC_EXPERIMENT,
    TENX_DATA,
    result_body,
    upload_folder,
)
from worker.store.experiment import open_experiment
from worker.store.locations import zarr_store
from worker.tasks.get_doublet_score import doublet_scores

TWO_SAMPLES = "test-qc-two-samples"


def values_of(response: dict, settings) -> np.ndarray:
    assert response["response"] == {"cacheable": True, "error": False}, response["results"]
    return np.array(result_body(response, settings), dtype=np.float64)


def error_of(response: dict, settings) -> dict:
    assert response["response"] == {"cacheable": False, "error": True}
    return result_body(response, settings)["error"]


def test_mitochondrial_content_equals_the_plain_formula(
    session_worker, session_settings, prepared_synthetic
):
    response = session_worker.ask({"name": "GetMitochondrialContent"}, SYNTHETIC_EXPERIMENT)
    percent = values_of(response, session_settings)
    store = ad.read_zarr(
        zarr_store(prepared_synthetic["store"], session_settings.aws, read_only=True)
    )
    counts = store.X.toarray().astype(np.float64)
    mito = store.var["gene_names"].str.startswith(("MT-", "mt-")).to_numpy()
    expected = 100 * counts[:, mito].sum(axis=1) / counts.sum(axis=1)
    assert mito.sum() > 0 and expected.min() > 0
    assert percent.shape == (store.n_obs,)
    np.testing.assert_allclose(percent, expected, rtol=1e-6)


@pytest.fixture(scope="module")
def two_samples(session_settings, session_worker) -> dict:
    """The real v3 matrix twice, as the samples `first` and `second` of one experiment."""
    for sample in ("first", "second"):
        upload_folder(session_settings, TENX_DATA / "v3_mtx_gz", SOURCE_BUCKET, f"qc/two/{sample}")
    response = session_worker.ask(
        {"name": "PrepareExperiment", "sourceBucket": SOURCE_BUCKET, "sourceMatrixPath": "qc/two"},
        TWO_SAMPLES,
        timeout_s=240,
    )
    body = result_body(response, session_settings)
    assert response["response"]["error"] is False, body
    return body


def test_doublet_scores_are_scrublet_per_sample_and_cached(
    session_worker, session_settings, two_samples
):
    scores = values_of(
        session_worker.ask({"name": "GetDoubletScore"}, TWO_SAMPLES), session_settings
    )
    store_url = two_samples["store"]
    cached = zarr.open_array(
        zarr_store(store_url, session_settings.aws, read_only=True),
        path="obs/doublet_score",
        mode="r",
    )
    completed_at = cached.attrs["completed_at"]

    store = ad.read_zarr(zarr_store(store_url, session_settings.aws, read_only=True))
    first = (store.obs["sample"] == "first").to_numpy()
    assert first.sum() == 1107 and store.n_obs == 2 * 1107
    sample = ad.AnnData(store.X[first])
    sc.pp.scrublet(sample, random_state=0)
    expected = sample.obs["doublet_score"].to_numpy()
    # Each sample is scored alone: the same counts give the same scores in both.
    np.testing.assert_allclose(scores[first], expected, rtol=1e-6)
    np.testing.assert_allclose(scores[~first], expected, rtol=1e-6)

    again = values_of(
        session_worker.ask({"name": "GetDoubletScore"}, TWO_SAMPLES), session_settings
    )
    np.testing.assert_array_equal(again, scores)
    cached = zarr.open_array(
        zarr_store(store_url, session_settings.aws, read_only=True),
        path="obs/doublet_score",
        mode="r",
    )
    assert cached.attrs["completed_at"] == completed_at


def test_samples_too_small_are_unscored(session_worker, session_settings, prepared_10x):
    response = session_worker.ask({"name": "GetDoubletScore"}, "shared-v2-mtx")
    assert response["response"] == {"cacheable": True, "error": False}
    assert result_body(response, session_settings) == [None] * 12


@pytest.mark.parametrize("task", ["GetMitochondrialContent", "GetDoubletScore"])
def test_errors(session_worker, session_settings, task):
    error = error_of(session_worker.ask({"name": task}, "no-such-experiment"), session_settings)
    assert error["code"] == "ExperimentNotFound"
    error = error_of(session_worker.ask({"name": task, "cellSets": []}), session_settings)
    assert error["code"] == "InvalidRequest" and "body.cellSets" in error["message"]


def test_a_sample_larger_than_a_batch_is_scored_per_batch_as_scanpys_batch_key(
    dask_client, session_settings, two_samples
):
    """With batches of at most 600 cells, each 1,107-cell sample is scored as runs of 554 and 553
    consecutive cells: what `sc.pp.scrublet` gives with those runs as its `batch_key`."""

    def scored_in_batches() -> tuple[np.ndarray, list]:
        store = open_experiment(session_settings.store_root, TWO_SAMPLES, session_settings.aws)
        reported = []
        scores = doublet_scores(
            store, lambda *progress: reported.append(progress), cells_per_batch=600
        )
        return scores, reported

    scores, reported = dask_client.submit(scored_in_batches, pure=False).result(240)
    assert reported == [(1, 4), (2, 4), (3, 4), (4, 4)]
    store = ad.read_zarr(zarr_store(two_samples["store"], session_settings.aws, read_only=True))
    first = (store.obs["sample"] == "first").to_numpy()
    sample = ad.AnnData(store.X[first])
    sample.obs["batch"] = np.repeat(["a", "b"], [554, 553])
    sc.pp.scrublet(sample, batch_key="batch", random_state=0)
    expected = sample.obs["doublet_score"].to_numpy()
    np.testing.assert_allclose(scores[first], expected, rtol=1e-6)
    np.testing.assert_allclose(scores[~first], expected, rtol=1e-6)
    # Not the whole sample's scores: the batches were scored apart.
    whole = ad.AnnData(store.X[first])
    sc.pp.scrublet(whole, random_state=0)
    assert not np.allclose(scores[first], whole.obs["doublet_score"].to_numpy(), rtol=1e-3)
