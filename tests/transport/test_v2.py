"""The Cellenics v2 protocol through the real queue, a real Redis server (the browser's events,
read as the platform's socket.io adapter receives them) and the emulator's S3."""

import base64
import uuid
from typing import Literal

import numpy as np
import pytest
import zstandard
from distributed import Event

from tests.conftest import RunningWorker, make_settings
from worker.local.client import V2Client, decode_result
from worker.tasks import V2_TASKS
from worker.tasks.base import Task, TaskContext, V2TaskBody
from worker.transport.aws import aws_client
from worker.transport.seed import SeedProtocol
from worker.transport.socketio import SocketEmitter, packet
from worker.transport.v2 import INLINE_BYTES, V2Protocol, task_label

EXPERIMENT = "shared-v3-mtx-gz"


class NoiseBody(V2TaskBody):
    name: Literal["Noise", "NoiseNotCached"]
    values: int


def noise(context: TaskContext, body: NoiseBody) -> list:
    """Incompressible numbers: their zstd bytes are about as many as they are."""
    return np.random.default_rng(0).random(body.values).tolist()


class ProgressBody(V2TaskBody):
    name: Literal["Progress"]
    event: str


def report_then_wait(context: TaskContext, body: ProgressBody) -> dict:
    context.report_progress(1, 4, "Clustering")
    if not Event(body.event).wait(timeout=120):
        raise TimeoutError("never released")
    return {"done": True}


TEST_TASKS = V2_TASKS | {
    "Noise": Task("Noise", NoiseBody, cacheable=True, compute=noise),
    "NoiseNotCached": Task("NoiseNotCached", NoiseBody, cacheable=False, compute=noise),
    "Progress": Task("Progress", ProgressBody, cacheable=True, compute=report_then_wait),
}


@pytest.fixture(scope="module")
def v2_settings(emulator, redis_server):
    return make_settings(emulator.url, WORKER_REDIS_URL=redis_server.url)


@pytest.fixture(scope="module")
def v2_worker(v2_settings, dask_client, prepared_10x):
    emitter = SocketEmitter(v2_settings.redis_url)
    running = RunningWorker(
        v2_settings,
        dask_client,
        [SeedProtocol(v2_settings), V2Protocol(v2_settings, emitter, TEST_TASKS)],
    )
    yield running
    running.stop()
    emitter.close()


@pytest.fixture
def client(v2_settings, v2_worker):
    client = V2Client(v2_settings)
    yield client
    client.close()


def percent_mito(settings) -> np.ndarray:
    import anndata as ad

    from worker.store.locations import read_manifest, version_url, zarr_store

    version = read_manifest(settings.store_root, EXPERIMENT, settings.aws)["version"]
    url = version_url(settings.store_root, EXPERIMENT, version)
    return ad.read_zarr(zarr_store(url, settings.aws, read_only=True)).obs["percent_mito"]


def test_packets_are_the_platform_emitters_bytes():
    """Byte for byte what PyPI socket.io-emitter 0.1.5.1 publishes (the platform's worker),
    checked to decode in the adapter's msgpack reader (notepack.io) as a string payload."""
    compressed = base64.b64decode("KLUv/SASkQAAW1sxLjUsIDIuMF0sIG51bGxd")
    assert zstandard.ZstdDecompressor().decompress(compressed) == b"[[1.5, 2.0], null]"
    work_response = packet("WorkResponse-0a1b", base64.b64encode(compressed).decode())
    assert work_response.hex() == (
        "93a7656d697474657283a46461746192b1576f726b526573706f6e73652d30613162da00244b4c55762f"
        "5341536b514141573173784c6a5573494449754d4630734947353162477864a47479706502a36e7370a1"
        "2f82a5666c616773a0a5726f6f6d73a0"
    )
    heartbeat = packet(
        "Heartbeat-e1",
        {
            "type": "WorkResponse",
            "status_code": "STARTED_TASK",
            "user_message": "Working on the requested task Embedding",
        },
    )
    assert heartbeat.hex() == (
        "93a7656d697474657283a46461746192ac4865617274626561742d653183a474797065ac576f726b5265"
        "73706f6e7365ab7374617475735f636f6465ac535441525445445f5441534bac757365725f6d657373616765"
        "da0027576f726b696e67206f6e2074686520726571756573746564207461736b20456d62656464696e67"
        "a47479706502a36e7370a12f82a5666c616773a0a5726f6f6d73a0"
    )


def test_task_labels_are_the_platforms():
    assert task_label("GetEmbedding") == "Embedding"
    assert task_label("DifferentialExpression") == "Differential Expression"
    assert task_label("GetNGenes") == "N Genes"


def test_a_result_is_stored_tagged_and_sent_inline_after_the_heartbeats(client, v2_settings):
    message = client.message({"name": "GetMitochondrialContent"}, EXPERIMENT)
    client.send(message)
    answer = client.answer(message)

    expected = percent_mito(v2_settings)
    np.testing.assert_allclose(answer.result, expected, rtol=1e-6)
    assert answer.notification is None  # the result came inline, as base64 text
    statuses = [beat["status_code"] for beat in answer.heartbeats]
    assert statuses == ["STARTED_TASK", "COMPRESSING_DATA", "UPLOADING_DATA", "FINISHED_TASK"]
    assert answer.heartbeats[0]["user_message"] == (
        "Working on the requested task Mitochondrial Content"
    )
    s3 = aws_client("s3", v2_settings.aws)
    stored = s3.get_object(Bucket=v2_settings.v2_results_bucket, Key=message["ETag"])
    np.testing.assert_allclose(decode_result(stored["Body"].read()), expected, rtol=1e-6)
    tags = s3.get_object_tagging(Bucket=v2_settings.v2_results_bucket, Key=message["ETag"])
    assert {tag["Key"]: tag["Value"] for tag in tags["TagSet"]} == {
        "experimentId": EXPERIMENT,
        "requestType": "GetMitochondrialContent",
    }


def test_a_large_result_is_announced_by_its_signed_url(client):
    message = client.message({"name": "Noise", "values": 60_000}, EXPERIMENT)
    client.send(message)
    answer = client.answer(message)
    assert answer.notification["response"] == {
        "cacheable": True,
        "error": False,
        "signedUrl": message["signedUrl"],
    }
    assert answer.notification["request"] == message
    assert answer.notification["type"] == "WorkResponse"
    assert answer.result == np.random.default_rng(0).random(60_000).tolist()


def test_the_inline_limit_is_on_the_compressed_bytes(client, v2_settings):
    # 20,000 floats: about 370 KB of JSON, under 250,000 bytes once compressed.
    message = client.message({"name": "Noise", "values": 20_000}, EXPERIMENT)
    client.send(message)
    answer = client.answer(message)
    stored = (
        aws_client("s3", v2_settings.aws)
        .get_object(Bucket=v2_settings.v2_results_bucket, Key=message["ETag"])["Body"]
        .read()
    )
    assert len(stored) <= INLINE_BYTES < len(zstandard.ZstdDecompressor().decompress(stored))
    assert answer.notification is None and len(answer.result) == 20_000


def test_a_non_cacheable_result_is_not_stored_and_broadcast(client, v2_settings):
    message = client.message(
        {"name": "NoiseNotCached", "values": 10}, EXPERIMENT, request_props={"broadcast": True}
    )
    client.send(message)
    answer = client.answer(message)
    assert answer.notification["response"] == {
        "cacheable": False,
        "error": False,
        "signedUrl": message["signedUrl"],
    }
    updates = [
        payload for event, payload in client.seen if event == f"ExperimentUpdates-{EXPERIMENT}"
    ]
    assert updates == [answer.notification]
    s3 = aws_client("s3", v2_settings.aws)
    listed = s3.list_objects_v2(Bucket=v2_settings.v2_results_bucket, Prefix=message["ETag"])
    assert listed.get("KeyCount", 0) == 0


@pytest.mark.parametrize(
    ("body", "experiment_id", "error_code", "named"),
    [
        ({"name": "GetMitochondrialContent"}, "../other", "INVALID_INPUT", "experimentId"),
        ({"name": "MakeCoffee"}, EXPERIMENT, "INVALID_INPUT", "MakeCoffee"),
        ({"name": "Noise", "values": "many"}, EXPERIMENT, "INVALID_INPUT", "body.values"),
        ({"name": "GetMitochondrialContent"}, "never-prepared", "PYTHON_WORKER_ERROR", "never"),
    ],
)
def test_errors_answer_the_platforms_codes(client, body, experiment_id, error_code, named):
    message = client.message(body, experiment_id)
    client.send(message)
    answer = client.answer(message)
    response = answer.notification["response"]
    assert response["error"] is True and response["cacheable"] is False
    assert response["errorCode"] == error_code and named in response["userMessage"]
    assert response["signedUrl"] == message["signedUrl"]


def test_expired_and_already_answered_requests_are_dropped(client, v2_settings, v2_worker):
    answered = client.message({"name": "GetMitochondrialContent"}, EXPERIMENT)
    client.send(answered)
    client.answer(answered)
    expired = client.message(
        {"name": "GetMitochondrialContent"}, EXPERIMENT, timeout="2021-01-01T00:00:00.000Z"
    )
    again = dict(answered, requestProps={"broadcast": False, "cacheUniquenessKey": 1})
    after = client.message({"name": "GetMitochondrialContent"}, EXPERIMENT)
    for message in (expired, again, after):
        client.send(message)
    client.answer(after)
    events = {event for event, _ in client.seen}
    assert f"WorkResponse-{expired['ETag']}" not in events
    assert [event for event, _ in client.seen].count(f"WorkResponse-{answered['ETag']}") == 1


def test_messages_without_an_etag_to_answer_are_dead_lettered(client, v2_settings, v2_worker):
    for text in ('{"ETag": "not hex!", "body": {}}', '{"ETag": 5}'):
        client.send(text)
    sqs = v2_worker.sqs
    dead_letter_url = sqs.get_queue_url(QueueName=v2_settings.dead_letter_queue)["QueueUrl"]
    bodies: set[str] = set()
    for _attempt in range(30):
        reply = sqs.receive_message(
            QueueUrl=dead_letter_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        for dead in reply.get("Messages", []):
            bodies.add(dead["Body"])
            # A FIFO queue gives the next of a group only once this one is gone.
            sqs.delete_message(QueueUrl=dead_letter_url, ReceiptHandle=dead["ReceiptHandle"])
        if len(bodies) == 2:
            break
    assert bodies == {'{"ETag": "not hex!", "body": {}}', '{"ETag": 5}'}


def test_progress_reaches_the_browser_while_a_task_runs(client, dask_client):
    message = client.message({"name": "Progress", "event": f"release-{uuid.uuid4()}"}, EXPERIMENT)
    release = Event(message["body"]["event"], client=dask_client)
    client.send(message)
    try:
        for _attempt in range(60):
            client.events()
            beats = [
                payload
                for event, payload in client.seen
                if event == f"Heartbeat-{EXPERIMENT}" and payload.get("progress_percent") == 25
            ]
            if beats:
                break
        assert beats and beats[0]["user_message"] == "Clustering (1/4)"
    finally:
        release.set()
    assert client.answer(message).result == {"done": True}
