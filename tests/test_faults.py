"""S3 and SNS faults, injected by a proxy in front of the emulator: transient ones are retried
and the response still arrives; permanent ones give an error response, or leave the message on
the queue to come back, and a request that fails every time ends in the dead-letter queue
without holding up the others."""

import logging
import time

import pytest

from tests.conftest import RunningWorker, make_request, make_settings, result_body
from tests.dask_processes import wait_until
from tests.test_loop import wait_until_queue_empty, write_gene_table_store
from worker.jsonio import dumps
from worker.local.aws_proxy import AwsProxy


@pytest.fixture
def proxy(emulator):
    proxy = AwsProxy(emulator.url)
    yield proxy
    proxy.stop()


@pytest.fixture
def proxied_worker(proxy, dask_client, request):
    """A worker whose every AWS call (its Dask tasks' too) goes through the proxy."""
    visibility = getattr(request, "param", "30")
    running = RunningWorker(
        make_settings(proxy.url, WORKER_VISIBILITY_TIMEOUT=visibility), dask_client
    )
    yield running
    proxy.clear()
    running.stop()


def answer(running: RunningWorker, body: dict, experiment_id: str, timeout_s: float = 120):
    request = make_request(body, experiment_id)
    running.send(request)
    return result_body(running.response(request["uuid"], timeout_s), running.settings)


@pytest.mark.timeout(240)
def test_transient_s3_and_sns_faults_are_retried(proxy, proxied_worker):
    for experiment_id in ("faults-s3", "faults-sns"):
        write_gene_table_store(proxied_worker.settings, experiment_id)
    proxy.fail("s3", 503, times=3)
    # A fresh experiment: its manifest is read from S3, not from a cache.
    assert answer(proxied_worker, {"name": "ListGenes", "limit": 1}, "faults-s3")["total"] == 300
    assert proxy.failed["s3"] == 3
    proxy.fail("sns", 503, times=2)
    assert answer(proxied_worker, {"name": "ListGenes", "limit": 1}, "faults-sns")["total"] == 300
    assert proxy.failed["sns"] == 2
    wait_until_queue_empty(proxied_worker)


@pytest.mark.timeout(240)
def test_s3_down_gives_an_error_response(proxy, proxied_worker, caplog):
    write_gene_table_store(proxied_worker.settings, "faults-s3-down")
    proxy.fail("s3", 503)
    with caplog.at_level(logging.INFO, logger="worker.service.loop"):
        error = answer(proxied_worker, {"name": "ListGenes"}, "faults-s3-down", 180)["error"]
        # Logged just after the message is deleted, which comes after the answer.
        wait_until(lambda: '"code":"TaskFailed"' in caplog.text, 30, "the outcome logged")
    assert error["code"] == "TaskFailed" and "traceback" not in error
    proxy.clear()
    assert answer(proxied_worker, {"name": "ListGenes", "limit": 1}, "faults-s3-down")["total"]
    wait_until_queue_empty(proxied_worker)


@pytest.mark.timeout(240)
# A visibility timeout shorter than the publish's retries: the message stays invisible while
# they run, so no second receive of it runs beside the first.
@pytest.mark.parametrize("proxied_worker", ["4"], indirect=True)
def test_sns_down_leaves_the_message_to_come_back(proxy, proxied_worker, caplog):
    write_gene_table_store(proxied_worker.settings, "faults-sns-down")
    proxy.fail("sns", 503)
    request = make_request({"name": "ListGenes", "limit": 1}, "faults-sns-down")
    with caplog.at_level(logging.ERROR, logger="worker.service.loop"):
        proxied_worker.send(request)
        deadline = time.monotonic() + 120
        while '"outcome":"failed"' not in caplog.text:
            assert time.monotonic() < deadline, "the publish failure was not logged"
            time.sleep(0.2)
    proxy.clear()
    response = proxied_worker.response(request["uuid"], timeout_s=120)
    assert response["request"] == request and response["response"]["error"] is False
    assert '"receiveCount":1' in caplog.text and '"receiveCount":2' not in caplog.text
    wait_until_queue_empty(proxied_worker, timeout_s=60)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("proxied_worker", ["2"], indirect=True)
def test_request_failing_every_time_is_dead_lettered_and_blocks_no_other(
    proxy, proxied_worker, caplog
):
    write_gene_table_store(proxied_worker.settings, "faults-dlq")
    doomed = make_request({"name": "ListGenes", "limit": 1}, "faults-dlq")
    # Its response is refused for good (400: not retried); every other response goes through.
    proxy.fail("sns", 400, matching=doomed["uuid"].encode())
    with caplog.at_level(logging.ERROR, logger="worker.service.loop"):
        proxied_worker.send(doomed)
        others = [make_request({"name": "ListGenes", "offset": i, "limit": 1}, "faults-dlq")
                  for i in range(6)]  # fmt: skip
        for request in others:
            proxied_worker.send(request)
        for request in others:
            assert proxied_worker.response(request["uuid"], 60)["response"]["error"] is False
        sqs = proxied_worker.sqs
        dead_letter_url = sqs.get_queue_url(QueueName=proxied_worker.settings.dead_letter_queue)[
            "QueueUrl"
        ]
        deadline = time.monotonic() + 60
        dead = []
        while not dead:
            assert time.monotonic() < deadline, "not dead-lettered"
            dead = sqs.receive_message(QueueUrl=dead_letter_url, WaitTimeSeconds=1).get(
                "Messages", []
            )
    assert [message["Body"] for message in dead] == [dumps(doomed).decode()]
    assert proxy.failed["sns"] == 3
    [last] = [line for line in caplog.text.splitlines() if '"receiveCount":3' in line]
    assert '"outcome":"failed"' in last and '"then":"dead-lettered by the queue"' in last
    wait_until_queue_empty(proxied_worker)
