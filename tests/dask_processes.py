"""Real `dask scheduler` and `dask worker` processes on loopback, to kill and start again.

They get an environment without the worker's settings (no AWS_*, WORKER_*, CLUSTER_ENV, DASK_*)
and a working directory of their own, as the Dask pods of a deployment have.
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from distributed import Client

import worker
from worker.service.cluster import source_hash

DASK = Path(sys.executable).with_name("dask")


def dask_environment(**extra: str) -> dict[str, str]:
    """This process's environment less everything the worker's settings come from."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "WORKER_", "DASK_", "CLUSTER_ENV"))
    } | extra


class DaskProcess:
    """One `dask ...` command, logging to `log_path`."""

    def __init__(self, arguments: list[str], directory: Path, log_path: Path, **environment: str):
        self.arguments = arguments
        self.directory = directory
        self.log_path = log_path
        self.environment = dask_environment(**environment)
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(
                [str(DASK), *self.arguments],
                cwd=self.directory,
                env=self.environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a pod is OOM-killed or its node vanishes."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.running():
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


def scheduler_process(directory: Path, port: int, **environment: str) -> DaskProcess:
    return DaskProcess(
        ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        directory,
        directory / f"scheduler-{port}.log",
        **environment,
    )


def worker_process(
    directory: Path, address: str, name: str, *options: str, **environment: str
) -> DaskProcess:
    """A `dask worker` with a nanny; `options` after the usual ones (a later `--nthreads` wins)."""
    return DaskProcess(
        ["worker", address, "--name", name, "--host", "127.0.0.1", "--nworkers", "1",
         "--nthreads", "2", "--memory-limit", "2GiB", "--no-dashboard",
         "--local-directory", str(directory), *options],
        directory,
        directory / f"{name}.log",
        **environment,
    )  # fmt: skip


class Supervised:
    """Dask worker processes started again whenever they exit, as Kubernetes restarts a pod's
    container (a `dask worker` exits when its scheduler goes away)."""

    def __init__(self, processes: list[DaskProcess]):
        self.processes = processes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        while True:
            for process in self.processes:
                if not process.running():
                    process.start()
            if self._stop.wait(0.2):
                return

    def stop(self) -> None:
        """Stop supervising and stop the processes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for process in self.processes:
            process.stop()


def wait_for_workers(address: str, count: int, timeout_s: float = 60) -> None:
    """Until the scheduler at `address` answers and has `count` Dask workers."""
    with Client(address, timeout="30s") as client:
        if count:
            client.wait_for_workers(count, timeout=timeout_s)


def wait_until(condition, timeout_s: float, what: str):
    """Poll `condition` until it returns something true."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def another_build(directory: Path) -> tuple[str, str]:
    """A copy of the worker package with one line of source added, as a build from another
    commit with the same version number: the PYTHONPATH that runs it, and its build."""
    package = directory / "another-build" / "worker"
    shutil.copytree(
        Path(worker.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    with open(package / "__init__.py", "a") as source:
        source.write("\n# another build of the same version\n")
    return str(package.parent), f"{worker.__version__}+{source_hash(package)}"
