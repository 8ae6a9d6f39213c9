"""A few hundred light requests through the real queue to one worker: each answered exactly
once, in-flight requests within the bound, memory flat."""

import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import (
    SOURCE_BUCKET,
    TENX_DATA,
    RunningWorker,
    make_request,
    upload_folder,
)
from worker.jsonio import dumps

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


@pytest.mark.timeout(800)
def test_hundreds_of_light_requests(settings, dask_client):
    running = RunningWorker(settings, dask_client)
    upload_folder(settings, TENX_DATA / "v3_mtx_gz", SOURCE_BUCKET, "load/v3")
    prepare = {
        "name": "PrepareExperiment",
        "sourceBucket": SOURCE_BUCKET,
        "sourceMatrixPath": "load/v3",
    }
    assert running.ask(prepare, "load", timeout_s=420)["response"]["error"] is False

    peak_in_flight = 0
    sampling = threading.Event()

    def sample_in_flight() -> None:
        nonlocal peak_in_flight
        while not sampling.is_set():
            value = running.health.registry.get_sample_value("worker_requests_in_flight")
            peak_in_flight = max(peak_in_flight, int(value))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample_in_flight, daemon=True)
    sampler.start()
    try:
        rss = []
        for _batch in range(2):
            requests = [
                make_request(LIGHT_BODIES[i % len(LIGHT_BODIES)], "load") for i in range(150)
            ]
            send_all(running, requests)
            answered = answer_all(running, requests, timeout_s=150)
            assert set(answered.values()) == {1}, "a request was answered more than once"
            assert set(answered) == {request["uuid"] for request in requests}
            rss.append(rss_mib())
    finally:
        sampling.set()
        sampler.join()
        running.stop()
    assert 1 < peak_in_flight <= settings.max_in_flight
    # The first batch warms caches and pools; the second must not grow memory with requests.
    assert rss[1] - rss[0] < 32, f"RSS grew from {rss[0]:.0f} to {rss[1]:.0f} MiB"
