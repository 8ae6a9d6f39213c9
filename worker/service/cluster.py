"""Where the computation runs: a LocalCluster here, or an existing Dask scheduler, checked to run
this build; the connection to either is watched and made again when lost."""

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from importlib.metadata import version
from pathlib import Path

import dask
import yaml
from distributed import Client, LocalCluster, WorkerPlugin
from distributed.client import ClosedClientError
from distributed.comm import CommClosedError

import worker
from worker.errors import ClusterMismatch

log = logging.getLogger(__name__)

# Packages whose versions must agree between the worker and the Dask processes: tasks are
# imported by name on the Dask workers and read stores written by either side.
AGREEING_PACKAGES = (
    "dask",
    "distributed",
    "numpy",
    "scipy",
    "pandas",
    "zarr",
    "anndata",
    "scanpy",
    "s3fs",
)

# How often the connection's watcher looks at the client; the pause between two attempts to
# connect, doubling from the first to the longest; how long one attempt (and Dask's client
# trying again by itself after a loss) lasts.
WATCH_EVERY_S = 0.2
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
CONNECT_TIMEOUT = "5s"


def source_hash(package_dir: Path) -> str:
    """A hash of a package's Python source files, their paths and contents."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        source = path.read_bytes()
        digest.update(f"{path.relative_to(package_dir).as_posix()}\0{len(source)}\0".encode())
        digest.update(source)
    return digest.hexdigest()[:16]


# The version number and a hash of the code this process imported, computed once at import:
# two builds with the same version number (every build before a release) still differ. From the
# installed files, so an image built without .git has it too.
BUILD = f"{worker.__version__}+{source_hash(Path(worker.__file__).parent)}"


def build_versions() -> dict[str, str]:
    """This process's build of the worker and its versions of the packages that must agree."""
    return {"worker": BUILD} | {name: version(name) for name in AGREEING_PACKAGES}


def build_differences(ours: dict[str, str], theirs: dict[str, str]) -> str | None:
    """What differs between two processes' `build_versions`, or None."""
    differing = [
        f"{name} {mine} here but {theirs.get(name)} there"
        for name, mine in ours.items()
        if theirs.get(name) != mine
    ]
    return ", ".join(differing) or None


class BuildCheck(WorkerPlugin):
    """Registered on the scheduler by the worker, so that it runs in every Dask worker present
    and in every one that joins later: a Dask worker of another build closes itself and its
    nanny before it runs a task (a closing Dask worker hands tasks back to the scheduler)."""

    name = "worker-build-check"

    def __init__(self, expected: dict[str, str]):
        self.expected = expected

    def setup(self, worker) -> None:
        differences = build_differences(build_versions(), self.expected)
        if differences is None:
            return
        log.error("refusing to run the tasks of another build of the worker: %s", differences)
        worker.loop.add_callback(worker.close, nanny=True, reason="worker-build-mismatch")


def load_conf(conf_dir: Path) -> None:
    """Load the project's Dask and logging configuration from `conf_dir`, if it is there."""
    dask_conf = conf_dir / "dask.yaml"
    if dask_conf.exists():
        # Over Dask's defaults, under DASK_* environment variables.
        dask.config.update(dask.config.config, yaml.safe_load(dask_conf.read_text()))
        dask.config.update(dask.config.config, dask.config.collect_env())
    load_logging_conf(conf_dir)


def load_logging_conf(conf_dir: Path) -> None:
    logging_conf = conf_dir / "logging.yaml"
    if logging_conf.exists():
        import logging.config

        logging.config.dictConfig(yaml.safe_load(logging_conf.read_text()))


def start_local_cluster(*, dashboard_address: str | None = None) -> LocalCluster:
    def option(name: str, default):
        # dask.config.get, not dict.get: it matches `n-workers` and an environment's `n_workers`.
        return dask.config.get(f"worker.local-cluster.{name}", default=default)

    return LocalCluster(
        n_workers=option("n-workers", 1),
        # None: LocalCluster gives each worker its share of the cores.
        threads_per_worker=option("threads-per-worker", None),
        memory_limit=option("memory-limit", "auto"),
        dashboard_address=dashboard_address or option("dashboard-address", ":8787"),
        processes=True,
        # The Dask worker processes take a session of their own (worker/service/own_session.py).
        preload=[
            *dask.config.get("distributed.worker.preload", default=[]),
            "worker.service.own_session",
        ],
    )


def connect(scheduler_address: str, *, wait_s: float = 60.0) -> Client:
    """A client of the scheduler, refused (ClusterMismatch) when the scheduler runs another build;
    Dask workers of another build, there now or joining later, refuse themselves (BuildCheck).
    A scheduler not up yet (started beside the worker) is waited for, trying with backoff, for
    up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    backoff_s = FIRST_BACKOFF_S
    while True:
        try:
            client = Client(scheduler_address, timeout=CONNECT_TIMEOUT, set_as_default=False)
            break
        except (OSError, TimeoutError) as error:
            if time.monotonic() + backoff_s > deadline:
                raise
            log.warning("waiting for the Dask scheduler at %s: %s", scheduler_address, error)
            time.sleep(backoff_s)
            backoff_s = min(2 * backoff_s, MAX_BACKOFF_S)
    try:
        check_builds(client)
    except BaseException:
        client.close()
        raise
    return client


def check_builds(client: Client) -> None:
    ours = build_versions()
    try:
        theirs = client.run_on_scheduler(build_versions)
    except ImportError as error:
        raise ClusterMismatch(f"the Dask scheduler cannot run the worker's code: {error}") from None
    differences = build_differences(ours, theirs)
    if differences:
        raise ClusterMismatch(f"the Dask scheduler runs another build: {differences}")
    try:
        client.register_plugin(BuildCheck(ours))
    except Exception as error:
        # A Dask worker that cannot even load the check runs something else entirely.
        raise ClusterMismatch(f"a Dask worker could not check its build: {error}") from None


def lost_with_the_cluster(error: BaseException) -> bool:
    """Whether a submission or its result failed because the client lost its scheduler (the
    client cancels its futures then), rather than because of the computation."""
    return isinstance(error, CancelledError | ClosedClientError | CommClosedError)


class DaskConnection:
    """The worker's Dask client, watched from a thread of its own. When the client loses its
    scheduler (killed, restarted, out of reach) it cancels its computations and tries to
    connect again by itself for CONNECT_TIMEOUT, then closes; the connection then makes new
    clients of the same address, with backoff, until one connects. Either way the scheduler
    found is checked as at start; one of another build is refused for good."""

    def __init__(self, client: Client, *, check_builds: bool):
        self.address = client.scheduler.address
        self._client = client
        self._given = client
        self._check_builds = check_builds
        self._usable = threading.Event()
        self._usable.set()
        self._lost_at = 0.0
        self._attempts = 0
        self._refusal: ClusterMismatch | None = None
        self._on_refused: list[Callable[[], None]] = []
        self._closing = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="dask-connection", daemon=True)
        self._watcher.start()

    @property
    def client(self) -> Client:
        return self._client

    def usable(self) -> bool:
        # The client's own status too: it turns to "connecting" the moment the scheduler's
        # connection closes, before the watcher looks.
        return self._usable.is_set() and self._client.status == "running"

    def wait_usable(self, stop: threading.Event, timeout_s: float | None = None) -> bool:
        """Whether the cluster is usable, waiting until it is, `stop` is set or `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.usable():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if stop.wait(WATCH_EVERY_S):
                return False
        return True

    def problem(self) -> str | None:
        """Why there is no usable cluster (for /healthz), or None."""
        if self._refusal is not None:
            return f"refused the Dask cluster at {self.address}: {self._refusal}"
        if self.usable():
            return None
        away_s = time.monotonic() - self._lost_at if self._lost_at else 0.0
        return (
            f"no Dask cluster: lost the scheduler at {self.address} {away_s:.0f} s ago, "
            f"connecting again (attempt {self._attempts})"
        )

    def on_refused(self, callback: Callable[[], None]) -> None:
        """Call `callback` if the scheduler found on connecting again runs another build."""
        self._on_refused.append(callback)
        if self._refusal is not None:
            callback()

    def raise_if_refused(self) -> None:
        if self._refusal is not None:
            raise self._refusal

    def close(self) -> None:
        """Stop watching, and close the clients this connection made (not the one it was given)."""
        self._closing.set()
        # A connection attempt in progress ends within CONNECT_TIMEOUT; the watcher then closes
        # the client it made, if any.
        self._watcher.join(timeout=1.0)

    def _watch(self) -> None:
        backoff_s = FIRST_BACKOFF_S
        while not self._closing.wait(WATCH_EVERY_S):
            status = self._client.status
            if status == "running" and self._usable.is_set():
                continue
            if self._usable.is_set():
                self._usable.clear()
                self._lost_at = time.monotonic()
                self._attempts = 1
                log.error("lost the Dask scheduler at %s: connecting again", self.address)
            if status == "connecting":
                # Dask's client tries again by itself for CONNECT_TIMEOUT, then closes for good.
                continue
            if status != "running":
                self._attempts += 1
                try:
                    client = Client(self.address, timeout=CONNECT_TIMEOUT, set_as_default=False)
                except (OSError, TimeoutError) as error:
                    log.warning("connecting to the Dask scheduler at %s: %s", self.address, error)
                    self._closing.wait(backoff_s)
                    backoff_s = min(2 * backoff_s, MAX_BACKOFF_S)
                    continue
                self._client = client
            # A scheduler again, maybe another one: checked as at start, and the Dask workers'
            # check registered on it.
            try:
                if self._check_builds:
                    check_builds(self._client)
            except ClusterMismatch as refusal:
                log.error("refusing the Dask cluster at %s: %s", self.address, refusal)
                self._refusal = refusal
                for callback in self._on_refused:
                    callback()
                return
            except (OSError, TimeoutError) as error:
                # Lost again while checking: the client's status says so at the next look.
                log.warning("checking the Dask scheduler at %s: %s", self.address, error)
                continue
            backoff_s = FIRST_BACKOFF_S
            self._usable.set()
            log.info(
                "connected to the Dask scheduler at %s again after %.1f s",
                self.address,
                time.monotonic() - self._lost_at,
            )
        if self._client is not self._given:
            self._client.close()
