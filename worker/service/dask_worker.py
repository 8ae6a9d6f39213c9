"""The set-up of every Dask worker process, preloaded through `distributed.worker.preload`
(conf/dask.yaml): the project's logging, so that PrepareExperiment's stage lines reach the
Dask worker's log, and, where `worker.warm-up-numba` is true, numba's compilation of the
neighbour graph in the background, so that the first PrepareExperiment on a fresh Dask worker
does not wait the minute it takes."""

import importlib
import logging
import os
import threading
import time
from pathlib import Path

import dask
import numpy as np

from worker.compute.graph import neighbour_graph
from worker.service.cluster import load_logging_conf

log = logging.getLogger(__name__)

# Set once the warm-up has compiled (or at once where there is none).
warm = threading.Event()

# Over scanpy's exact-neighbours threshold (4096 cells) and large enough for pynndescent's
# code paths of large data: a smaller warm-up leaves most of the compiling to the first graph.
WARM_UP_CELLS = 20_000
WARM_UP_DIMENSIONS = 50


def dask_setup(dask_worker) -> None:
    load_logging_conf(Path(os.environ.get("WORKER_CONF_DIR", "conf")))
    if dask.config.get("worker.warm-up-numba", default=False):
        # Imported here first, in this thread: the tasks unpickled while the warm-up runs import
        # the same modules, and a module two threads import at once can be seen half-made
        # (ImportError on scipy.spatial, seen on a Dask worker that restarted mid-benchmark).
        importlib.import_module("scanpy")
        importlib.import_module("worker.tasks")
        threading.Thread(target=_compile_neighbour_graph, name="numba-warm-up", daemon=True).start()
    else:
        warm.set()


def is_warm() -> bool:
    """Whether this Dask worker is done warming up (for `client.run`)."""
    return warm.is_set()


def _compile_neighbour_graph() -> None:
    started = time.monotonic()
    points = np.random.default_rng(0).normal(size=(WARM_UP_CELLS, WARM_UP_DIMENSIONS))
    neighbour_graph(points.astype(np.float32))
    warm.set()
    log.info("numba warmed up for the neighbour graph in %.0f s", time.monotonic() - started)
