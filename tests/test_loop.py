"""The queue loop through real SQS/SNS/S3 (moto server) and a real LocalCluster."""

import logging
import threading
import time
import uuid

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from distributed import Event

from tests.conftest import RunningWorker, make_request, result_body
from tests.dask_processes import wait_until
from tests.gate import TASKS_WITH_GATE
from worker.jsonio import dumps, loads
from worker.store.locations import new_version_name, publish_version, zarr_store
from worker.tasks import TASKS
from worker.tasks.base import TaskContext
from worker.tasks.dispatch import TaskResult, run_task, validated
from worker.transport.aws import aws_client
from worker.transport.seed import OFFLOAD_BYTES, SeedProtocol, StoredWhenLarge


def write_gene_table_store(settings, experiment_id: str, n_genes: int = 300) -> pd.DataFrame:
    """An experiment store written with anndata's own zarr writer, for tasks reading `var`."""
    rng = np.random.default_rng(7)
    var = pd.DataFrame(
        {
            "gene_ids": [f"ENSG{i:011d}" for i in range(n_genes)],
            "gene_names": [f"G{i}.{'AB'[i % 2]}" for i in range(n_genes)],
            "n_cells": rng.integers(0, 50, n_genes),
            "means": rng.random(n_genes).astype(np.float32),
            "dispersions": np.where(rng.random(n_genes) < 0.1, np.nan, rng.random(n_genes)),
            "dispersions_norm": rng.random(n_genes).astype(np.float32),
            "highly_variable": rng.random(n_genes) < 0.3,
        }
    )
    var.index = var["gene_names"].to_numpy()
    adata = ad.AnnData(X=sp.random(20, n_genes, density=0.1, format="csr", random_state=1), var=var)
    version = new_version_name()
    url = f"{settings.store_root}/{experiment_id}/{version}"
    adata.write_zarr(zarr_store(url, settings.aws, read_only=False))
    publish_version(settings.store_root, experiment_id, version, settings.aws, provenance={})
    return var


def test_valid_request_is_answered_then_deleted(running_worker, settings):
    var = write_gene_table_store(settings, "listgenes1")
    request = make_request(
        {
            "name": "ListGenes",
            "selectFields": ["gene_names", "dispersions"],
            "orderBy": "dispersions",
            "orderDirection": "DESC",
            "offset": 2,
            "limit": 5,
        },
        experiment_id="listgenes1",
        pagination={"page": 2},
    )
    running_worker.send(request)
    response = running_worker.response(request["uuid"])
    assert response["request"] == request
    assert response["response"] == {"cacheable": True, "error": False}
    result = response["results"][0]
    assert result["type"] == "inline" and isinstance(result["body"], str)
    body = result_body(response, settings)
    expected = var.sort_values("dispersions", ascending=False, kind="stable", na_position="last")
    assert body["total"] == len(var)
    assert [row["gene_names"] for row in body["rows"]] == list(expected["gene_names"][2:7])
    assert set(body["rows"][0]) == {"gene_names", "dispersions"}
    wait_until_queue_empty(running_worker)


def wait_until_queue_empty(running_worker, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while True:
        attributes = running_worker.sqs.get_queue_attributes(
            QueueUrl=running_worker.queue.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        if all(value == "0" for value in attributes.values()):
            return
        assert time.monotonic() < deadline, f"queue still holds messages: {attributes}"
        time.sleep(0.2)


def test_expired_request_is_deleted_unanswered(running_worker, settings):
    write_gene_table_store(settings, "expired1")
    expired = make_request(
        {"name": "ListGenes"}, experiment_id="expired1", timeout="2021-01-01T00:00:00Z"
    )
    running_worker.send(expired)
    fresh = make_request({"name": "ListGenes", "limit": 1}, experiment_id="expired1")
    running_worker.send(fresh)
    assert running_worker.response(fresh["uuid"])["response"]["error"] is False
    wait_until_queue_empty(running_worker)
    with pytest.raises(TimeoutError, match="no response"):
        running_worker.response(expired["uuid"], timeout_s=2)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "ListGenes", "orderBy": "nonsense"}, "body.orderBy"),
        ({"name": "ListGenes", "limit": "many"}, "body.limit"),
        ({"name": "ListGenes", "offset": -1}, "body.offset"),
        ({"name": "ListGenes", "selectFields": ["gene_names", "secret"]}, "body.selectFields"),
        ({"name": "ListGenes", "surprise": 1}, "body.surprise"),
    ],
)
def test_invalid_body_names_the_field(running_worker, body, field):
    response = running_worker.ask(body)
    assert response["response"] == {"cacheable": False, "error": True}
    error = result_body(response, running_worker.settings)["error"]
    assert error["code"] == "InvalidRequest"
    assert field in error["message"]


def test_invalid_envelope_fields_are_invalid_requests(running_worker):
    for experiment_id in ("../other", "a/b", "%2fetc", ""):
        request = make_request({"name": "ListGenes"}, experiment_id=experiment_id)
        running_worker.send(request)
        error = result_body(running_worker.response(request["uuid"]), running_worker.settings)
        assert error["error"]["code"] == "InvalidRequest"
        assert "experimentId" in error["error"]["message"]


def test_unknown_task(running_worker):
    response = running_worker.ask({"name": "MakeCoffee"})
    error = result_body(response, running_worker.settings)["error"]
    assert error["code"] == "UnknownTask"
    assert "MakeCoffee" in error["message"]


def test_missing_experiment(running_worker):
    response = running_worker.ask({"name": "ListGenes"}, experiment_id="neverprepared")
    assert result_body(response, running_worker.settings)["error"]["code"] == "ExperimentNotFound"


def test_poison_message_goes_to_dead_letter_queue_and_worker_goes_on(running_worker, settings):
    sqs = running_worker.sqs
    running_worker.send("this is { not json")
    running_worker.send(dumps({"experimentId": "e1", "body": {"name": "ListGenes"}}).decode())
    write_gene_table_store(settings, "afterpoison")
    assert (
        running_worker.ask({"name": "ListGenes", "limit": 1}, "afterpoison")["response"]["error"]
        is False
    )
    dead_letter_url = sqs.get_queue_url(QueueName=settings.dead_letter_queue)["QueueUrl"]
    bodies = set()
    deadline = time.monotonic() + 30
    while len(bodies) < 2 and time.monotonic() < deadline:
        reply = sqs.receive_message(
            QueueUrl=dead_letter_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        bodies |= {message["Body"] for message in reply.get("Messages", [])}
    assert "this is { not json" in bodies
    assert len(bodies) == 2


def test_large_result_is_offloaded_to_s3(running_worker, settings):
    var = write_gene_table_store(settings, "bigresult", n_genes=20000)
    response = running_worker.ask({"name": "ListGenes"}, experiment_id="bigresult")
    result = response["results"][0]
    assert result["type"] == "s3-path"
    bucket, key = result["body"].split("/", 1)
    assert bucket == settings.results_bucket
    assert key.startswith(response["request"]["uuid"] + "/")
    body = result_body(response, settings)
    assert body["total"] == len(var) == len(body["rows"])


def test_a_large_body_is_stored_by_the_dask_worker_and_a_small_one_travels(dask_client, settings):
    write_gene_table_store(settings, "bigresult-dask", n_genes=20000)
    context = TaskContext.for_experiment(settings, "bigresult-dask")
    s3 = aws_client("s3", settings.aws)

    def run(body: dict, results_bucket: str) -> TaskResult:
        task, validated_body = validated(TASKS, body)
        delivery = StoredWhenLarge(settings.aws, results_bucket, "req-1")
        return dask_client.submit(
            run_task, task, validated_body, context, delivery, False, pure=False
        ).result()

    stored = run({"name": "ListGenes"}, settings.results_bucket)
    bucket, key = stored.stored_at.split("/", 1)
    assert stored.code is None and stored.body is None
    assert bucket == settings.results_bucket and key.startswith("req-1/")
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert stored.size == len(body) >= OFFLOAD_BYTES
    assert loads(body)["total"] == 20000 == len(loads(body)["rows"])
    # Small: the body itself. Unstorable (no such bucket): the body, for the queue worker.
    small = run({"name": "ListGenes", "limit": 2}, settings.results_bucket)
    assert small.stored_at is None and len(loads(small.body)["rows"]) == 2
    assert small.size == len(small.body)
    unstored = run({"name": "ListGenes"}, "no-such-results-bucket")
    assert unstored.stored_at is None and loads(unstored.body) == loads(body)


def test_several_requests_in_flight_complete_independently(running_worker, settings):
    write_gene_table_store(settings, "inflight")
    requests = [
        make_request({"name": "ListGenes", "offset": i, "limit": 1}, experiment_id="inflight")
        for i in range(8)
    ]
    for request in requests:
        running_worker.send(request)
    offsets = {}
    for index, request in enumerate(requests):
        body = result_body(running_worker.response(request["uuid"]), settings)
        offsets[index] = body["rows"][0]["gene_names"]
    assert len(set(offsets.values())) == 8


def test_sigterm_style_stop_releases_unfinished_message(settings, dask_client):
    """A request still computing when the grace period ends is made visible again at once."""
    quick = settings.model_copy(update={"shutdown_grace_s": 0.5})
    running = RunningWorker(quick, dask_client, [SeedProtocol(quick, TASKS_WITH_GATE)])
    request = make_request({"name": "Gate", "event": f"gate-{uuid.uuid4()}"}, "gated")
    gate = Event(request["body"]["event"], client=dask_client)
    try:
        running.send(request)
        wait_for_queue(running, visible="0", in_flight="1")
        running.stop()
        reply = running.sqs.receive_message(QueueUrl=running.queue.url, WaitTimeSeconds=2)
        assert [message["Body"] for message in reply.get("Messages", [])] == [
            dumps(request).decode()
        ]
        assert running.api.published(wait_s=1) == []
    finally:
        gate.set()


def wait_for_queue(running, *, visible: str, in_flight: str, timeout_s: float = 30) -> None:
    """Until the queue holds `visible` messages and `in_flight` invisible ones."""
    deadline = time.monotonic() + timeout_s
    while True:
        attributes = running.sqs.get_queue_attributes(
            QueueUrl=running.queue.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        if (
            attributes["ApproximateNumberOfMessages"] == visible
            and attributes["ApproximateNumberOfMessagesNotVisible"] == in_flight
        ):
            return
        assert time.monotonic() < deadline, attributes
        time.sleep(0.1)


def test_visibility_is_extended_while_a_task_runs(settings, dask_client, caplog):
    """A request computing for several visibility timeouts is received once, answered once."""
    short = settings.model_copy(update={"visibility_timeout_s": 3})
    running = RunningWorker(short, dask_client, [SeedProtocol(short, TASKS_WITH_GATE)])
    request = make_request({"name": "Gate", "event": f"gate-{uuid.uuid4()}"}, "gated")
    gate = Event(request["body"]["event"], client=dask_client)
    try:
        with caplog.at_level(logging.INFO, logger="worker.service.loop"):
            running.send(request)
            wait_for_queue(running, visible="0", in_flight="1")
            # Three visibility timeouts pass with the request held: it must stay invisible.
            held_until = time.monotonic() + 3 * short.visibility_timeout_s
            while time.monotonic() < held_until:
                wait_for_queue(running, visible="0", in_flight="1", timeout_s=1)
            gate.set()
            response = running.response(request["uuid"])
            wait_for_queue(running, visible="0", in_flight="0")
            # Logged just after the message is deleted.
            wait_until(lambda: '"outcome"' in caplog.text, 30, "the outcome logged")
        assert running.api.result(response) == {"opened": request["body"]["event"]}
        outcomes = [
            record.getMessage() for record in caplog.records if '"outcome"' in record.getMessage()
        ]
        assert len(outcomes) == 1 and '"receiveCount":1' in outcomes[0]
    finally:
        gate.set()
        running.stop()


def test_a_poll_abandoned_at_stop_gives_back_what_it_receives(settings, dask_client, caplog):
    """stop() does not wait for a long poll in progress; a message that poll still receives is
    made visible again at once."""
    long_poll = settings.model_copy(update={"poll_wait_s": 20})
    with caplog.at_level(logging.INFO, logger="worker.service.loop"):
        running = RunningWorker(long_poll, dask_client)
        # The thread's only work is the long poll: while it lives, the poll is in progress.
        deadline = time.monotonic() + 30
        while not any(thread.name == "receive" for thread in threading.enumerate()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        running.stop()
        assert "stopping with a receive in progress" in caplog.text
        request = make_request({"name": "ListGenes"}, "abandoned")
        running.send(request)
        deadline = time.monotonic() + 30
        while '"outcome":"released"' not in caplog.text:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert '"reason":"received as the worker stopped"' in caplog.text
    # Visible again long before its visibility timeout (30 s) would have ended.
    wait_for_queue(running, visible="1", in_flight="0", timeout_s=10)
    reply = running.sqs.receive_message(
        QueueUrl=running.queue.url, WaitTimeSeconds=1, MessageSystemAttributeNames=["All"]
    )
    [message] = reply["Messages"]
    assert message["Body"] == dumps(request).decode()
    # Received once by the abandoned poll, once here.
    assert message["Attributes"]["ApproximateReceiveCount"] == "2"
