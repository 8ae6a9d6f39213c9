"""A worker SIGKILLed in the middle of a request loses nothing: the message comes back after its
visibility timeout, the next worker completes it, and no half-written store is ever current."""

import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from tests.conftest import (
    SOURCE_BUCKET,
    TENX_DATA,
    make_request,
    make_settings,
    result_body,
    upload_folder,
)
from tests.tasks.helpers import read_hierarchies
from tests.worker_process import WorkerProcess, worker_environment
from worker.jsonio import dumps
from worker.local.client import ApiClient
from worker.store.locations import list_versions, read_manifest, zarr_store
from worker.transport.aws import aws_client


def in_flight(sqs, queue_url: str) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessagesNotVisible"])


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def responses_until(api: ApiClient, request_uuid: str, timeout_s: float) -> list[dict]:
    """Every response published until the one for `request_uuid` arrives."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while all(response["request"]["uuid"] != request_uuid for response in seen):
        assert time.monotonic() < deadline, f"no response for {request_uuid}"
        seen.extend(api.published(wait_s=1))
    return seen


def read_store(settings, experiment_id: str) -> ad.AnnData:
    version = read_manifest(settings.store_root, experiment_id, settings.aws)["version"]
    url = f"{settings.store_root}/{experiment_id}/{version}"
    return ad.read_zarr(zarr_store(url, settings.aws, read_only=True))


@pytest.mark.timeout(900)
def test_killed_worker_loses_no_request_and_leaves_no_half_store(emulator, tmp_path):
    settings = make_settings(emulator.url, WORKER_VISIBILITY_TIMEOUT="5")
    sqs = aws_client("sqs", settings.aws)
    queue_url = sqs.get_queue_url(QueueName=settings.queue)["QueueUrl"]
    api = ApiClient(settings)
    upload_folder(settings, TENX_DATA / "v3_mtx_gz", SOURCE_BUCKET, "crash/v3")
    environment = worker_environment(settings)
    prepare = {
        "name": "PrepareExperiment",
        "sourceBucket": SOURCE_BUCKET,
        "sourceMatrixPath": "crash/v3",
    }

    def send(request: dict) -> None:
        sqs.send_message(
            QueueUrl=queue_url, MessageBody=dumps(request).decode(), MessageGroupId=request["uuid"]
        )

    workers = []

    def start() -> WorkerProcess:
        workers.append(WorkerProcess(environment, tmp_path / "worker.log"))
        workers[-1].wait_until_listening()
        return workers[-1]

    try:
        # Killed while writing a new store version: the version is there, the manifest is not.
        first = start()
        crashed = make_request(prepare, experiment_id="crashed")
        send(crashed)
        wait_for(
            lambda: list_versions(settings.store_root, "crashed", settings.aws), 120, "a version"
        )
        first.kill()
        assert read_manifest(settings.store_root, "crashed", settings.aws) is None
        assert api.published() == []
        [half_written] = list_versions(settings.store_root, "crashed", settings.aws)

        # The next worker receives it again after the visibility timeout and completes it.
        second = start()
        [response] = responses_until(api, crashed["uuid"], 420)
        assert response["request"] == crashed and response["response"]["error"] is False
        manifest = read_manifest(settings.store_root, "crashed", settings.aws)
        assert manifest["version"] != half_written
        assert list_versions(settings.store_root, "crashed", settings.aws) == [manifest["version"]]

        # Killed while computing and caching a UMAP on the prepared store.
        umap = make_request({"name": "GetEmbedding", "type": "umap"}, experiment_id="crashed")
        send(umap)
        wait_for(lambda: in_flight(sqs, queue_url) == 1, 60, "the UMAP request to be received")
        time.sleep(1)
        second.kill()
        assert api.published() == []

        third = start()
        [response] = responses_until(api, umap["uuid"], 180)
        assert response["response"]["error"] is False
        embedding = result_body(response, settings)

        # Equal to an uninterrupted run, and the cached UMAP is the one answered.
        reference = make_request(prepare, experiment_id="uninterrupted")
        send(reference)
        responses_until(api, reference["uuid"], 420)
        again = make_request({"name": "GetEmbedding", "type": "umap"}, experiment_id="crashed")
        send(again)
        [response] = responses_until(api, again["uuid"], 60)
        assert result_body(response, settings) == embedding
        third.stop()
    finally:
        for worker in workers:
            worker.stop()

    crashed_store, uninterrupted = (
        read_store(settings, "crashed"),
        read_store(settings, "uninterrupted"),
    )
    assert (crashed_store.X != uninterrupted.X).nnz == 0
    pd.testing.assert_frame_equal(crashed_store.obs, uninterrupted.obs)
    pd.testing.assert_frame_equal(crashed_store.var, uninterrupted.var)
    np.testing.assert_allclose(crashed_store.obsm["X_pca"], uninterrupted.obsm["X_pca"], rtol=1e-5)
    assert (crashed_store.obsp["connectivities"] != uninterrupted.obsp["connectivities"]).nnz == 0
    assert read_hierarchies(settings, "crashed") == read_hierarchies(settings, "uninterrupted")
