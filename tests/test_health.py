import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker.service.health import HealthServer

pytestmark = pytest.mark.timeout(30)

STALE_AFTER_S = 60.0


class Clock:
    """A clock the test moves: staleness is checked without waiting for it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(server: HealthServer, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def key(name: str, **labels: str) -> tuple[str, frozenset]:
    return name, frozenset(labels.items())


def scrape(server: HealthServer) -> dict[tuple[str, frozenset], float]:
    """Every sample on /metrics, keyed like `key`."""
    status, text = get(server, "/metrics")
    assert status == 200
    return {
        key(sample.name, **sample.labels): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def server(clock):
    health = HealthServer(host="127.0.0.1", port=0, stale_after_s=STALE_AFTER_S, clock=clock)
    health.start()
    yield health
    health.stop()


def test_healthy_before_the_first_poll_until_stale(server, clock):
    assert get(server, "/healthz") == (200, "ok")
    clock.now += STALE_AFTER_S
    assert get(server, "/healthz") == (200, "ok")
    clock.now += 0.001
    assert get(server, "/healthz")[0] == 503


def test_healthy_after_a_poll_and_stale_once_polling_stops(server, clock):
    clock.now += 2 * STALE_AFTER_S
    assert get(server, "/healthz")[0] == 503
    server.mark_polled()
    assert get(server, "/healthz") == (200, "ok")
    clock.now += STALE_AFTER_S + 0.001
    assert get(server, "/healthz")[0] == 503


def test_unknown_path_is_404(server):
    assert get(server, "/nope")[0] == 404


def test_request_finished_moves_the_counter_and_histogram(server):
    server.request_finished("GetEmbedding", "ok", 1.5)
    server.request_finished("GetEmbedding", "ok", 0.02)
    server.request_finished("ListGenes", "error", 0.3)

    samples = scrape(server)
    assert samples[key("worker_requests_total", task="GetEmbedding", outcome="ok")] == 2
    assert samples[key("worker_requests_total", task="ListGenes", outcome="error")] == 1
    assert samples[key("worker_task_seconds_count", task="GetEmbedding")] == 2
    assert samples[key("worker_task_seconds_sum", task="GetEmbedding")] == pytest.approx(1.52)
    assert samples[key("worker_task_seconds_bucket", task="GetEmbedding", le="0.05")] == 1


def test_unknown_outcome_is_rejected(server):
    with pytest.raises(ValueError, match="outcome"):
        server.request_finished("ListGenes", "maybe", 0.1)


def test_in_flight_gauge_follows_the_context(server):
    in_flight = key("worker_requests_in_flight")
    assert scrape(server)[in_flight] == 0
    with server.in_flight(), server.in_flight():
        assert scrape(server)[in_flight] == 2
    assert scrape(server)[in_flight] == 0


def test_instances_keep_their_own_metrics(server):
    other = HealthServer(host="127.0.0.1", port=0, stale_after_s=STALE_AFTER_S)
    other.start()
    try:
        server.request_finished("ListGenes", "ok", 0.1)
        list_genes_ok = key("worker_requests_total", task="ListGenes", outcome="ok")
        assert scrape(server)[list_genes_ok] == 1
        assert list_genes_ok not in scrape(other)
        assert other.port != server.port
    finally:
        other.stop()
