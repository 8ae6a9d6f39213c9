"""Starting and stopping everything `python -m worker run` needs, in order."""

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from urllib.parse import urlsplit

from distributed import Client

from worker.local.emulator import Emulator, endpoint_listening, provision
from worker.local.redis_server import RedisServer
from worker.service.cluster import DaskConnection, connect, start_local_cluster
from worker.service.health import HealthServer
from worker.service.loop import QueueWorker
from worker.service.signals import StopSignals
from worker.settings import Settings
from worker.transport.protocol import Protocol
from worker.transport.queue import WorkQueue
from worker.transport.seed import SeedProtocol
from worker.transport.socketio import SocketEmitter
from worker.transport.v2 import V2Protocol

log = logging.getLogger(__name__)


def start_emulator_if_needed(settings: Settings, resources: ExitStack) -> Emulator | None:
    """In development, start moto's server at the endpoint unless something listens there;
    returned unready (see `started`)."""
    endpoint = settings.aws.endpoint_url
    if settings.is_deployed or not endpoint:
        return None
    if endpoint_listening(endpoint):
        print(f"using the AWS endpoint already listening at {endpoint}", flush=True)
        return None
    if not settings.start_emulator:
        return None
    emulator = Emulator(urlsplit(endpoint).port or 4566)
    resources.callback(stop_then_say, emulator.stop, "the embedded AWS emulator")
    return emulator


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


def start_redis_if_needed(settings: Settings, resources: ExitStack) -> RedisServer | None:
    """In development and test, start a Redis server at the Redis URL unless one answers;
    returned unready (see `started`)."""
    if not settings.start_redis or settings.redis_url is None:
        return None
    address = urlsplit(settings.redis_url)
    if endpoint_listening(f"tcp://{address.hostname}:{address.port or 6379}"):
        print(f"using the Redis server already listening at {settings.redis_url}", flush=True)
        return None
    server = RedisServer(address.port or 6379)
    resources.callback(stop_then_say, server.stop, "the embedded Redis server")
    return server


def protocols(settings: Settings, resources: ExitStack) -> list[Protocol]:
    """The message formats served: the seed contract's, and Cellenics v2 where its results
    bucket is known (its notifications go through Redis when one is named)."""
    served: list[Protocol] = [SeedProtocol(settings)]
    if not settings.v2_results_bucket:
        log.warning("v2 requests are not served: set AWS_ACCOUNT_ID or WORKER_V2_RESULTS_BUCKET")
        return served
    emitter = None
    if settings.redis_url:
        emitter = SocketEmitter(settings.redis_url)
        resources.callback(emitter.close)
    else:
        log.warning("WORKER_REDIS_URL is not set: v2 results are stored, but nobody is notified")
    served.append(V2Protocol(settings, emitter))
    return served


@contextmanager
def started(settings: Settings, *, prepare_sample: bool = True) -> Iterator[DaskConnection]:
    """The emulator and Redis (in development), Dask and the seeded sample (prepared unless
    told not to); stopped in reverse on exit."""
    with ExitStack() as resources:
        # The emulator and Redis start while the LocalCluster does: each takes seconds.
        emulator = start_emulator_if_needed(settings, resources)
        redis_server = start_redis_if_needed(settings, resources)
        dask = dask_connection(settings, resources)
        if emulator is not None:
            emulator.ready()
            print(f"started the embedded AWS emulator at {emulator.url}", flush=True)
        if settings.aws.endpoint_url and not settings.is_deployed:
            provision(settings)
        if redis_server is not None:
            redis_server.ready()
            print(f"started the embedded Redis server at {redis_server.url}", flush=True)
        if settings.seed_sample:
            # Here, not at the top: the sample pulls in the builder and every task (anndata,
            # numba...), which the queue process otherwise never imports.
            from worker.local.sample import seed_sample

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
        worker = QueueWorker(settings, dask, queue, protocols(settings, resources), health)
        signals.serving(worker.stop)
        dask.on_refused(worker.stop)
        print(f"listening on {queue.url}", flush=True)
        worker.run()
        dask.raise_if_refused()
    log.info("worker stopped")
    return 0
