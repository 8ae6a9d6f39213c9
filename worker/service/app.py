"""Starting and stopping everything `python -m worker run` needs, in order."""

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from urllib.parse import urlsplit

from distributed import Client

from worker.local.emulator import Emulator, endpoint_listening, provision
from worker.local.sample import seed_sample
from worker.service.cluster import connect, start_local_cluster
from worker.service.health import HealthServer
from worker.service.loop import QueueWorker
from worker.service.signals import StopSignals
from worker.settings import Settings
from worker.transport.queue import WorkQueue
from worker.transport.seed import SeedProtocol

log = logging.getLogger(__name__)


def start_emulator_if_needed(settings: Settings, resources: ExitStack) -> None:
    """In development, start moto's server at the endpoint unless something listens there."""
    endpoint = settings.aws.endpoint_url
    if settings.is_deployed or not endpoint:
        return
    if endpoint_listening(endpoint):
        print(f"using the AWS endpoint already listening at {endpoint}", flush=True)
    elif settings.start_emulator:
        emulator = Emulator(urlsplit(endpoint).port or 4566)
        resources.callback(stop_then_say, emulator.stop, "the embedded AWS emulator")
        print(f"started the embedded AWS emulator at {emulator.url}", flush=True)
    provision(settings)


def stop_then_say(stop: Callable[[], None], what: str) -> None:
    stop()
    print(f"stopped {what}", flush=True)


def dask_client(settings: Settings, resources: ExitStack) -> Client:
    if settings.dask_scheduler_address:
        client = connect(settings.dask_scheduler_address)
        resources.callback(client.close)
        print(f"connected to the Dask scheduler at {settings.dask_scheduler_address}", flush=True)
    else:
        cluster = start_local_cluster()
        resources.callback(stop_then_say, cluster.close, "the Dask LocalCluster")
        client = Client(cluster)
        resources.callback(client.close)
        print(f"started a Dask LocalCluster; dashboard: {client.dashboard_link}", flush=True)
    return client


@contextmanager
def started(settings: Settings, *, prepare_sample: bool = True) -> Iterator[Client]:
    """The emulator (in development), Dask and the seeded sample (prepared unless told not
    to); stopped in reverse on exit."""
    with ExitStack() as resources:
        start_emulator_if_needed(settings, resources)
        client = dask_client(settings, resources)
        if settings.seed_sample:
            seed_sample(settings, client, prepare=prepare_sample)
        yield client


def serve(settings: Settings) -> int:
    """Run the worker until SIGINT or SIGTERM; returns the exit status."""
    with StopSignals() as signals, started(settings) as client, ExitStack() as resources:
        health = HealthServer(
            host="0.0.0.0" if settings.is_deployed else "127.0.0.1",
            port=settings.health_port or 0,
            stale_after_s=max(60.0, 3.0 * settings.poll_wait_s),
        )
        if settings.health_port is not None:
            health.start()
            resources.callback(health.stop)
            print(f"health and metrics on port {health.port}", flush=True)
        queue = WorkQueue(settings)
        worker = QueueWorker(settings, client, queue, [SeedProtocol(settings)], health)
        signals.serving(worker.stop)
        print(f"listening on {queue.url}", flush=True)
        worker.run()
    log.info("worker stopped")
    return 0
