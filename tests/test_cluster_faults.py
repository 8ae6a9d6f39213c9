"""The worker through faults of its Dask cluster, on real `dask scheduler` and `dask worker`
processes: the scheduler killed and started again on its address, Dask workers killed in the
middle of a query, and a scheduler or a Dask worker of another build."""

import collections
import logging
import os
import re
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client, Event, get_task_stream

from tests.conftest import RunningWorker, free_port, make_request, make_settings
from tests.dask_processes import (
    Supervised,
    another_build,
    scheduler_process,
    wait_for_workers,
    wait_until,
    worker_process,
)
from tests.gate import TASKS_WITH_GATE
from tests.test_loop import wait_until_queue_empty, write_gene_table_store
from tests.worker_process import WorkerProcess, worker_environment
from worker.errors import ClusterMismatch
from worker.jsonio import loads
from worker.local.client import ApiClient
from worker.service.cluster import BUILD, connect
from worker.transport.aws import aws_client
from worker.transport.seed import SeedProtocol

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[str]:
    """A scheduler and two Dask workers (with nannies) that can import the tests' Gate task;
    a task is run again after one death of its Dask worker, not after two."""
    directory = tmp_path_factory.mktemp("cluster")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    environment = {
        "PYTHONPATH": str(ROOT),
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1",
    }
    processes = [
        scheduler_process(directory, port, **environment),
        *(
            worker_process(directory, address, f"dask-{i}", "--preload", "worker.tasks",
                           **environment)
            for i in range(2)
        ),
    ]  # fmt: skip
    try:
        for process in processes:
            process.start()
        wait_for_workers(address, 2, timeout_s=120)
        yield address
    finally:
        for process in reversed(processes):
            process.stop()


@pytest.fixture(scope="module")
def client(cluster) -> Iterator[Client]:
    """The worker's client of the cluster, through the build check."""
    client = connect(cluster)
    yield client
    client.close()


@pytest.fixture
def gated_worker(emulator, client) -> Iterator[RunningWorker]:
    settings = make_settings(emulator.url)
    running = RunningWorker(settings, client, [SeedProtocol(settings, TASKS_WITH_GATE)])
    yield running
    running.stop()


def gate_request() -> dict:
    return make_request({"name": "Gate", "event": f"gate-{uuid.uuid4()}"}, "gated")


def running_on(client: Client, request: dict) -> str | None:
    """The Dask worker the request's task is processing on, if any."""
    prefix = f"Gate-{request['uuid']}"
    for address, keys in client.processing().items():
        if any(str(key).startswith(prefix) for key in keys):
            return address
    return None


def running_on_another(client: Client, request: dict, excluded: list[str]) -> str | None:
    address = running_on(client, request)
    return address if address not in excluded else None


def kill_dask_worker(client: Client, address: str) -> None:
    """SIGKILL the Dask worker process at `address` (its nanny starts another)."""
    os.kill(client.run(os.getpid, workers=[address])[address], signal.SIGKILL)


def logged_outcomes(caplog, request: dict) -> list[tuple[str, int]]:
    """The request's outcomes, once one is logged: the loop logs it just after deleting the
    message, so it may come after the queue shows the message gone."""
    return wait_until(lambda: outcomes(caplog.text)[request["uuid"]], 30, "the outcome logged")


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def queue_counts(sqs, queue_url: str) -> tuple[int, int]:
    """Messages visible, and received but not yet deleted or released."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def outcomes(log: str) -> dict[str, list[tuple[str, int]]]:
    """Each request id's outcomes in the worker's log, in order, with the receive count."""
    found = collections.defaultdict(list)
    for line in log.splitlines():
        _, marker, text = line.partition("request {")
        if marker:
            record = loads("{" + text)
            found[record.get("id")].append((record["outcome"], record["receiveCount"]))
    return found


class Responses:
    """Every response published, counted by request uuid."""

    def __init__(self, api: ApiClient):
        self.api = api
        self.counts: collections.Counter[str] = collections.Counter()
        self.bodies: dict[str, dict] = {}

    def read(self) -> None:
        for response in self.api.published(wait_s=1):
            uuid = response["request"]["uuid"]
            self.counts[uuid] += 1
            self.bodies[uuid] = self.api.result(response)

    def wait_for(self, *uuids: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(uuid in self.counts for uuid in uuids):
            assert time.monotonic() < deadline, f"no response for {set(uuids) - set(self.counts)}"
            self.read()


def test_a_scheduler_restart_is_survived_and_nothing_reaches_the_dead_letter_queue(
    tmp_path, emulator
):
    settings = make_settings(emulator.url)
    genes = write_gene_table_store(settings, "restarted", n_genes=40)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = scheduler_process(tmp_path, port)
    # One thread, and the tasks' modules imported as it starts (as the chart's preload does),
    # so that a restarted Dask worker is ready when its scheduler is back.
    dask_worker = worker_process(
        tmp_path, address, "dask-worker", "--nthreads", "1", "--preload", "worker.tasks"
    )
    dask_workers = Supervised([dask_worker])
    health_port = free_port()
    # One request at a time: no receive is in progress while a request is in flight.
    environment = worker_environment(
        settings,
        DASK_SCHEDULER_ADDRESS=address,
        WORKER_HEALTH_PORT=str(health_port),
        WORKER_MAX_IN_FLIGHT="1",
    )
    # Started before its scheduler, as pods of a release may be: it waits for it.
    worker = WorkerProcess(environment, tmp_path / "worker.log")
    try:
        wait_until(
            lambda: f"waiting for the Dask scheduler at {address}" in worker.log(),
            60,
            "the worker waiting for its scheduler",
        )
        scheduler.start()
        dask_workers.start()
        worker.wait_until_listening()
        api = ApiClient(settings)
        sqs = aws_client("sqs", settings.aws)
        responses = Responses(api)
        requests = {
            name: make_request({"name": "ListGenes", "limit": 1}, "restarted")
            for name in ("before", "in flight", "during", "after")
        }
        uuid = {name: request["uuid"] for name, request in requests.items()}

        api.send(requests["before"])
        responses.wait_for(uuid["before"])

        def keys(dask_scheduler) -> list:
            # Defined here, so pickled by value: the scheduler cannot import the tests.
            return list(dask_scheduler.tasks)

        # The Dask worker's one thread kept busy, so the next request waits on the scheduler.
        with Client(address, timeout="30s") as holder:
            hold = holder.submit(Event("hold", client=holder).wait, 600, pure=False)
            wait_until(lambda: any(holder.processing().values()), 60, "the Dask worker busy")
            api.send(requests["in flight"])
            wait_until(
                lambda: any(uuid["in flight"] in str(key) for key in holder.run_on_scheduler(keys)),
                60,
                "the request's task on the scheduler",
            )
            del hold
        scheduler.kill()

        _, reason = wait_until(
            lambda: (found := healthz(health_port))[0] == 503 and found, 30, "/healthz 503"
        )
        assert reason.startswith(f"no Dask cluster: lost the scheduler at {address}"), reason
        wait_until(
            lambda: ("released", 1) in outcomes(worker.log())[uuid["in flight"]],
            30,
            "the request in flight released",
        )
        api.send(requests["during"])
        # The worker tries again with backoff; by its second attempt a loop still polling
        # (every second here) would have received both messages.
        wait_until(lambda: "(attempt 2)" in healthz(health_port)[1], 60, "a second attempt")
        assert healthz(health_port)[0] == 503
        assert queue_counts(sqs, api.queue_url) == (2, 0)

        scheduler.start()
        wait_until(lambda: healthz(health_port) == (200, "ok"), 60, "/healthz 200")
        api.send(requests["after"])
        responses.wait_for(*uuid.values())
        wait_until(lambda: queue_counts(sqs, api.queue_url) == (0, 0), 30, "an empty queue")
        responses.read()

        assert worker.process.poll() is None
        assert dict(responses.counts) == {request_uuid: 1 for request_uuid in uuid.values()}
        first_gene = genes.sort_values("dispersions", ascending=False, kind="stable")
        for request_uuid in uuid.values():
            body = responses.bodies[request_uuid]
            assert body["total"] == len(genes)
            assert body["rows"][0]["gene_names"] == first_gene["gene_names"].iloc[0]
        logged = outcomes(worker.log())
        assert logged[uuid["before"]] == [("ok", 1)]
        assert logged[uuid["in flight"]] == [("released", 1), ("ok", 2)]
        assert logged[uuid["during"]] == [("ok", 1)]
        assert logged[uuid["after"]] == [("ok", 1)]
        dead_letter_url = sqs.get_queue_url(QueueName=settings.dead_letter_queue)["QueueUrl"]
        assert queue_counts(sqs, dead_letter_url) == (0, 0)
    finally:
        worker.stop()
        dask_workers.stop()
        scheduler.stop()
    assert worker.process.returncode == 0, worker.log()


def test_a_dask_worker_killed_mid_query_is_survived(gated_worker, client, caplog):
    request = gate_request()
    gate = Event(request["body"]["event"], client=client)
    try:
        with caplog.at_level(logging.INFO, logger="worker.service.loop"):
            gated_worker.send(request)
            doomed = wait_until(lambda: running_on(client, request), 60, "the query running")
            kill_dask_worker(client, doomed)
            wait_until(
                lambda: running_on_another(client, request, [doomed]),
                60,
                "the query running on another Dask worker",
            )
            gate.set()
            response = gated_worker.response(request["uuid"])
            wait_until_queue_empty(gated_worker)
            # Inside the block: past it, the INFO line the loop may still log is not captured.
            assert logged_outcomes(caplog, request) == [("ok", 1)]
        assert response["response"]["error"] is False
        assert gated_worker.api.result(response) == {"opened": request["body"]["event"]}
    finally:
        gate.set()


def test_a_query_whose_dask_workers_keep_dying_is_answered_with_an_error(
    gated_worker, client, caplog
):
    def allowed_failures(dask_scheduler) -> int:
        return dask_scheduler.allowed_failures

    request = gate_request()
    try:
        with caplog.at_level(logging.INFO, logger="worker.service.loop"):
            gated_worker.send(request)
            killed: list[str] = []
            for _ in range(client.run_on_scheduler(allowed_failures) + 1):
                doomed = wait_until(
                    lambda: running_on_another(client, request, killed),
                    120,
                    "the query running on a Dask worker not killed yet",
                )
                kill_dask_worker(client, doomed)
                killed.append(doomed)
            response = gated_worker.response(request["uuid"])
            wait_until_queue_empty(gated_worker)
            # Inside the block: past it, the INFO line the loop may still log is not captured.
            assert logged_outcomes(caplog, request) == [("error", 1)]
        error = gated_worker.api.result(response)["error"]
        assert response["response"]["error"] is True
        assert error["code"] == "TaskFailed"
        assert "KilledWorker" in error["message"]
    finally:
        Event(request["body"]["event"], client=client).set()
        client.wait_for_workers(2, timeout=120)


def test_a_dask_worker_of_another_build_refuses_itself_and_runs_no_task(
    tmp_path, cluster, client, gated_worker
):
    def task_keys(dask_scheduler) -> list[str]:
        # Defined here, so pickled by value: the scheduler needs not import the tests.
        return [str(key) for key in dask_scheduler.tasks]

    pythonpath, other_build = another_build(tmp_path)
    hold = Event(f"hold-{uuid.uuid4()}", client=client)
    request = gate_request()
    Event(request["body"]["event"], client=client).set()
    foreign = worker_process(tmp_path, cluster, "another-build", PYTHONPATH=pythonpath)
    try:
        with get_task_stream(client) as stream:
            # Every thread of the two Dask workers busy: the query waits on the scheduler, for
            # the first Dask worker to have a free thread.
            holders = [client.submit(hold.wait, 120, pure=False) for _ in range(4)]
            wait_until(lambda: sum(map(len, client.processing().values())) == 4, 60, "threads busy")
            gated_worker.send(request)
            wait_until(
                lambda: request["uuid"] in str(client.run_on_scheduler(task_keys)),
                60,
                "the query on the scheduler",
            )
            foreign.start()
            wait_until(lambda: not foreign.running(), 120, "the Dask worker of another build")
            hold.set()
            response = gated_worker.response(request["uuid"])
            del holders
        [foreign_address] = re.findall(r"Start worker at:\s+(\S+)", foreign.log())
        refusal = (
            "refusing to run the tasks of another build of the worker: "
            f"worker {other_build} here but {BUILD} there"
        )
        assert refusal in foreign.log()
        assert gated_worker.api.result(response) == {"opened": request["body"]["event"]}
        ran_on = {task["worker"] for task in stream.data}
        assert foreign_address not in ran_on
        assert ran_on <= set(client.scheduler_info()["workers"])
        assert foreign_address not in client.scheduler_info()["workers"]
    finally:
        hold.set()
        foreign.stop()


def test_a_scheduler_of_another_build_is_refused_at_start_and_when_connecting_again(
    tmp_path, emulator
):
    pythonpath, other_build = another_build(tmp_path)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    refusal = f"the Dask scheduler runs another build: worker {BUILD} here but {other_build} there"
    foreign = scheduler_process(tmp_path, port, PYTHONPATH=pythonpath)
    ours = scheduler_process(tmp_path, port)
    worker = None
    try:
        foreign.start()
        wait_for_workers(address, 0)
        with pytest.raises(ClusterMismatch, match=re.escape(refusal)):
            connect(address)
        foreign.stop()

        ours.start()
        wait_for_workers(address, 0)
        settings = make_settings(emulator.url)
        worker = WorkerProcess(
            worker_environment(settings, DASK_SCHEDULER_ADDRESS=address), tmp_path / "worker.log"
        )
        worker.wait_until_listening()
        ours.kill()
        foreign.start()
        wait_until(lambda: worker.process.poll() is not None, 120, "the worker to stop")
        assert worker.process.returncode == 2, worker.log()
        assert f"refusing the Dask cluster: {refusal}" in worker.log()
    finally:
        if worker is not None:
            worker.stop()
        foreign.stop()
        ours.stop()
