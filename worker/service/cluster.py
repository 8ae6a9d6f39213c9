"""Where the computation runs: a LocalCluster here, or an existing Dask scheduler."""

import logging
from importlib.metadata import version
from pathlib import Path

import dask
import yaml
from distributed import Client, LocalCluster

from worker.errors import ClusterMismatch

log = logging.getLogger(__name__)

# Packages whose versions must agree between the worker and the Dask workers: tasks are
# imported by name on the Dask workers and read stores written by either side.
AGREEING_PACKAGES = (
    "worker",
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


def package_versions() -> dict[str, str]:
    return {name: version(name) for name in AGREEING_PACKAGES}


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


def connect(scheduler_address: str) -> Client:
    """A client of the scheduler, refused when its workers run other package versions."""
    client = Client(scheduler_address, timeout="30s")
    ours = package_versions()
    versions_by_worker = client.run(package_versions)
    if not versions_by_worker:
        # Workers that join later are not checked: in a deployment they start with the worker.
        log.warning("no Dask worker at %s yet: package versions not checked", scheduler_address)
    for address, theirs in versions_by_worker.items():
        differing = {
            name: (ours[name], theirs.get(name)) for name in ours if theirs.get(name) != ours[name]
        }
        if differing:
            client.close()
            details = ", ".join(
                f"{name} {mine} here but {other} there" for name, (mine, other) in differing.items()
            )
            raise ClusterMismatch(f"Dask worker {address} runs other package versions: {details}")
    return client
