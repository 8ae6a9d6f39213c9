"""A few hundred light requests through the real queue to one worker: each answered exactly
once, memory flat; and in-flight requests bounded."""

import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from distributed import Event

from tests.conftest import RunningWorker, make_request
from tests.gate import TASKS_WITH_GATE
from worker.jsonio import dumps
from worker.transport.seed import SeedProtocol

# Prepared once for the session (tests/conftest.py prepared_10x).
EXPERIMENT = "shared-v3-mtx-gz"

LIGHT_BODIES = [
    {"name": "ListGenes", "limit": 5, "geneNamesFilter": "%A%"},
    {"name": "GeneExpression", "genes": ["CST3", "NOT-A-GENE"]},
    {"name": "GetMitochondrialContent"},
]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def send_all(running: RunningWorker, requests: list[dict]) -> None:
    for start in range(0, len(requests), 10):
        running.sqs.send_message_batch(
            QueueUrl=running.queue.url,
            Entries=[
                {"Id": str(i), "MessageBody": dumps(r).decode(), "MessageGroupId": uuid.uuid4().hex}
                for i, r in enumerate(requests[start : start + 10])
            ],
        )


def answer_all(running: RunningWorker, requests: list[dict], timeout_s: float) -> Counter:
    """How many responses arrived per uuid, reading a little past the last one for duplicates."""
    answered: Counter = Counter()
    wanted = {request["uuid"] for request in requests}
    deadline = time.monotonic() + timeout_s
    while not wanted <= set(answered):
        assert time.monotonic() < deadline, f"{len(wanted - set(answered))} unanswered"
        for response in running.api.published(wait_s=1):
            assert response["response"]["error"] is False, response
            answered[response["request"]["uuid"]] += 1
    for response in running.api.published(wait_s=2):
        answered[response["request"]["uuid"]] += 1
    return answered


@pytest.mark.timeout(600)
def test_hundreds_of_light_requests(settings, dask_client, prepared_10x):
    """300 requests on a prepared experiment: each answered exactly once, memory flat."""
    running = RunningWorker(settings, dask_client)
    try:
        rss = []
        for _batch in range(2):
            requests = [
                make_request(LIGHT_BODIES[i % len(LIGHT_BODIES)], EXPERIMENT) for i in range(150)
            ]
            send_all(running, requests)
            answered = answer_all(running, requests, timeout_s=150)
            assert set(answered.values()) == {1}, "a request was answered more than once"
            assert set(answered) == {request["uuid"] for request in requests}
            rss.append(rss_mib())
    finally:
        running.stop()
    # The first batch warms caches and pools; the second must not grow memory with requests.
    assert rss[1] - rss[0] < 32, f"RSS grew from {rss[0]:.0f} to {rss[1]:.0f} MiB"


@pytest.mark.timeout(120)
def test_requests_in_flight_reach_the_bound_and_never_pass_it(settings, dask_client):
    """More held requests than slots: exactly `max_in_flight` are received and computing, the
    rest wait on the queue, and all are answered once released."""
    running = RunningWorker(settings, dask_client, [SeedProtocol(settings, TASKS_WITH_GATE)])
    gate = f"gate-{uuid.uuid4()}"
    requests = [
        make_request({"name": "Gate", "event": gate}, "gated")
        for _ in range(settings.max_in_flight + 2)
    ]
    try:
        send_all(running, requests)
        in_flight = running.health.registry
        deadline = time.monotonic() + 60
        while in_flight.get_sample_value("worker_requests_in_flight") < settings.max_in_flight:
            assert time.monotonic() < deadline, "the slots never filled"
            time.sleep(0.05)
        attributes = running.sqs.get_queue_attributes(
            QueueUrl=running.queue.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        assert attributes == {
            "ApproximateNumberOfMessages": "2",
            "ApproximateNumberOfMessagesNotVisible": str(settings.max_in_flight),
        }
        assert in_flight.get_sample_value("worker_requests_in_flight") == settings.max_in_flight
        Event(gate, client=dask_client).set()
        answered = answer_all(running, requests, timeout_s=60)
        assert set(answered.values()) == {1}
    finally:
        Event(gate, client=dask_client).set()
        running.stop()
