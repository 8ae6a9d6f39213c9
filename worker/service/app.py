"""Starting and stopping everything `python -m worker run` needs, in order."""

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from urllib.parse import urlsplit

from distributed import Client

from worker.local.emulator import Emulator, endpoint_listening, provision
from worker.local.sample import seed_sample
from worker.service.cluster import DaskConnection, connect, start_local_cluster
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


def dask_connection(settings: Settings, resources: ExitStack) -> DaskConnection:
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
    connection = DaskConnection(client, check_builds=bool(settings.dask_scheduler_address))
    resources.callback(connection.close)
    return connection


@contextmanager
def started(settings: Settings, *, prepare_sample: bool = True) -> Iterator[DaskConnection]:
    """The emulator (in development), Dask and the seeded sample (prepared unless told not
    to); stopped in reverse on exit."""
    with ExitStack() as resources:
        start_emulator_if_needed(settings, resources)
        dask = dask_connection(settings, resources)
        if settings.seed_sample:
            seed_sample(settings, dask.client, prepare=prepare_sample)
        yield dask


def serve(settings: Settings) -> int:
    """Run the worker until SIGINT or SIGTERM; returns the exit status. Raises ClusterMismatch
    when the Dask cluster runs another build, at start or on connecting again."""
    with StopSignals() as signals, started(settings) as dask, ExitStack() as resources:
        health = HealthServer(
            host="0.0.0.0" if settings.is_deployed else "127.0.0.1",
            port=settings.health_port or 0,
            stale_after_s=max(60.0, 3.0 * settings.poll_wait_s),
        )
        if settings.health_port is not None:
            health.start()
            resources.callback(health.stop)
            print(f"health and metrics on port {health.port}", flush=True)
        health.add_check(dask.problem)
        queue = WorkQueue(settings)
        worker = QueueWorker(settings, dask, queue, [SeedProtocol(settings)], health)
        signals.serving(worker.stop)
        dask.on_refused(worker.stop)
        print(f"listening on {queue.url}", flush=True)
        worker.run()
        dask.raise_if_refused()
    log.info("worker stopped")
    return 0
