"""Preloaded into the Dask worker processes of the worker's own LocalCluster (never into Dask
workers started by hand): each takes a session of its own, so that a terminal's Ctrl-C or a
signal to the worker's process group reaches the worker alone, which then finishes its requests
and only then stops the cluster. They still stop if the worker dies: the nanny's pipe closes."""

import os


def dask_setup(dask_worker) -> None:
    os.setsid()
