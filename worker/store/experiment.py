"""The experiment store: where versions live, the manifest that makes one current, and
opening the current version (cached per process, so a Dask worker reopens nothing)."""

import asyncio
import contextlib
import logging
import secrets
import threading
import time
import warnings
from collections import OrderedDict
from datetime import UTC, datetime
from functools import cached_property

import anndata as ad
import fsspec
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr
from anndata.io import read_elem
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

from worker.errors import ExperimentNotFound
from worker.jsonio import dumps, loads
from worker.settings import AwsSettings

log = logging.getLogger(__name__)

# The store is zarr format 3 with sharded arrays; anndata still writes format 2 unless told.
ad.settings.zarr_write_format = 3
ad.settings.auto_shard_zarr_v3 = True
# Consolidated metadata is what lets a store open in one read; zarr warns it is not in the spec.
warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)

STORE_FORMAT = 1
MANIFEST = "manifest.json"
# A manifest read is cached this long, so an interactive query costs no extra round trip;
# a re-prepared experiment is seen by every Dask worker within this many seconds.
MANIFEST_TTL_S = 2.0
OPEN_STORES_PER_PROCESS = 16


def filesystem(url: str, aws: AwsSettings) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and path of a `s3://...` URL or a local path."""
    options = aws.storage_options() if url.startswith("s3://") else {}
    return fsspec.url_to_fs(url, **options)


def zarr_store(url: str, aws: AwsSettings, *, read_only: bool):
    if url.startswith("s3://"):
        return FsspecStore.from_url(url, storage_options=aws.storage_options(), read_only=read_only)
    return LocalStore(url.removeprefix("file://"), read_only=read_only)


def experiment_url(store_root: str, experiment_id: str) -> str:
    return f"{store_root.rstrip('/')}/{experiment_id}"


def new_version_name() -> str:
    """A version name that sorts by creation time."""
    return f"v{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{secrets.token_hex(4)}"


def read_manifest(store_root: str, experiment_id: str, aws: AwsSettings) -> dict | None:
    fs, path = filesystem(f"{experiment_url(store_root, experiment_id)}/{MANIFEST}", aws)
    # s3fs sizes a file from its cached listing: one made before the manifest existed hides it.
    fs.invalidate_cache(path)
    try:
        return loads(fs.cat_file(path))
    except FileNotFoundError:
        return None


def publish_version(
    store_root: str, experiment_id: str, version: str, aws: AwsSettings, provenance: dict
) -> str:
    """Make `version` current by writing the manifest; returns the version's URL.

    Versions older than the one it replaces are deleted: the one replaced stays for readers
    that opened it moments ago.
    """
    base = experiment_url(store_root, experiment_id)
    fs, base_path = filesystem(base, aws)
    previous = read_manifest(store_root, experiment_id, aws)
    manifest = {"format": STORE_FORMAT, "version": version, **provenance}
    fs.pipe_file(f"{base_path}/{MANIFEST}", dumps(manifest))
    keep = {version, previous["version"] if previous else None}
    for stale in list_versions(store_root, experiment_id, aws):
        if stale not in keep:
            delete_version(store_root, experiment_id, stale, aws)
    _forget_manifest(store_root, experiment_id)
    return f"{base}/{version}"


def list_versions(store_root: str, experiment_id: str, aws: AwsSettings) -> list[str]:
    fs, base_path = filesystem(experiment_url(store_root, experiment_id), aws)
    try:
        entries = fs.ls(base_path, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    names = (entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries)
    return sorted(name for name in names if name.startswith("v"))


def delete_version(store_root: str, experiment_id: str, version: str, aws: AwsSettings) -> None:
    fs, path = filesystem(f"{experiment_url(store_root, experiment_id)}/{version}", aws)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)


class ExperimentStore:
    """One opened version of an experiment's AnnData zarr group."""

    def __init__(self, experiment_id: str, version: str, url: str, aws: AwsSettings):
        self.experiment_id = experiment_id
        self.version = version
        self.url = url
        self.group = zarr.open_group(zarr_store(url, aws, read_only=True), mode="r")

    @cached_property
    def var(self) -> pd.DataFrame:
        return read_elem(self.group["var"])

    @cached_property
    def obs(self) -> pd.DataFrame:
        return read_elem(self.group["obs"])

    @property
    def n_cells(self) -> int:
        return len(self.obs)

    @property
    def n_genes(self) -> int:
        return len(self.var)

    @cached_property
    def total_counts(self) -> np.ndarray:
        return self.obs["total_counts"].to_numpy(dtype=np.float64)

    @cached_property
    def _counts_by_gene_arrays(self) -> tuple[np.ndarray, zarr.Array, zarr.Array]:
        """The CSC copy's indptr (read) and its data and indices arrays (opened)."""
        matrix = self.group["layers/counts_by_gene"]
        return matrix["indptr"][:], matrix["data"], matrix["indices"]

    def counts_by_gene(self, gene_indices: np.ndarray) -> sp.csc_matrix:
        """Raw counts of all cells for the given genes (cells x len(gene_indices))."""
        indptr, data_array, indices_array = self._counts_by_gene_arrays
        starts, stops = indptr[gene_indices], indptr[np.asarray(gene_indices) + 1]
        slices = [slice(int(start), int(stop)) for start, stop in zip(starts, stops, strict=True)]
        values = read_slices([(data_array, part) for part in slices] + [
            (indices_array, part) for part in slices
        ])  # fmt: skip
        data, indices = values[: len(slices)], values[len(slices) :]
        return sp.csc_matrix(
            (
                np.concatenate(data) if data else np.zeros(0, np.float32),
                np.concatenate(indices) if indices else np.zeros(0, np.int32),
                np.concatenate([[0], np.cumsum(stops - starts)]),
            ),
            shape=(self.n_cells, len(gene_indices)),
        )


def read_slices(reads: list[tuple[zarr.Array, slice]]) -> list[np.ndarray]:
    """Each (array, slice) read, all at once: on S3 the round trips overlap."""

    async def read_all():
        return await asyncio.gather(*(array._async_array.getitem(part) for array, part in reads))

    return sync(read_all())


_manifests: dict[tuple[str, str], tuple[float, dict | None]] = {}
_stores: OrderedDict[str, ExperimentStore] = OrderedDict()
_cache_lock = threading.Lock()


def _forget_manifest(store_root: str, experiment_id: str) -> None:
    with _cache_lock:
        _manifests.pop((store_root, experiment_id), None)


def open_experiment(store_root: str, experiment_id: str, aws: AwsSettings) -> ExperimentStore:
    """The current version of an experiment, opened once per process and kept (LRU)."""
    key = (store_root, experiment_id)
    with _cache_lock:
        cached = _manifests.get(key)
    if cached is None or time.monotonic() - cached[0] > MANIFEST_TTL_S:
        manifest = read_manifest(store_root, experiment_id, aws)
        with _cache_lock:
            _manifests[key] = (time.monotonic(), manifest)
    else:
        manifest = cached[1]
    if manifest is None:
        raise ExperimentNotFound(f"experiment {experiment_id} has not been prepared")
    url = f"{experiment_url(store_root, experiment_id)}/{manifest['version']}"
    with _cache_lock:
        store = _stores.get(url)
        if store is not None:
            _stores.move_to_end(url)
            return store
    store = ExperimentStore(experiment_id, manifest["version"], url, aws)
    with _cache_lock:
        _stores[url] = store
        while len(_stores) > OPEN_STORES_PER_PROCESS:
            _stores.popitem(last=False)
    return store
