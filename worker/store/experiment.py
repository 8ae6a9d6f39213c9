"""The typed read API of an experiment store version, and its per-process cache, so a Dask
worker reopens nothing between queries."""

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property

import numpy as np
import pandas as pd
import zarr
from anndata.io import read_elem
from scipy import sparse
from zarr.errors import ContainsArrayError, NodeNotFoundError

from worker.compute.arithmetic import log_normalise
from worker.errors import ExperimentNotFound
from worker.settings import AwsSettings
from worker.store.locations import experiment_url, read_manifest, zarr_store
from worker.store.sparse import CompressedMatrix
from worker.store.writer import COMPRESSOR, element_attributes

log = logging.getLogger(__name__)

# A manifest read is cached this long, so queries in a row cost no extra round trip. A
# PrepareExperiment in this cluster tells every Dask worker to drop it at once
# (`forget_manifest`); a version published from elsewhere is seen within this many seconds.
MANIFEST_TTL_S = 2.0
OPEN_STORES_PER_PROCESS = 16
COMPLETED = "completed_at"


@dataclass(frozen=True)
class StoreParameters:
    """The parameters the store was built with (`uns/worker/parameters`)."""

    n_top_genes: int
    n_comps: int
    n_neighbors: int
    louvain_resolution: float
    random_state: int


class ExperimentStore:
    """One opened version of an experiment's AnnData zarr group."""

    def __init__(self, experiment_id: str, version: str, url: str, aws: AwsSettings):
        self.experiment_id = experiment_id
        self.version = version
        self.url = url
        self.aws = aws
        self.group = zarr.open_group(zarr_store(url, aws, read_only=True), mode="r", zarr_format=3)

    @cached_property
    def var(self) -> pd.DataFrame:
        return read_elem(self.group["var"])

    @cached_property
    def obs(self) -> pd.DataFrame:
        return read_elem(self.group["obs"])

    @cached_property
    def shape(self) -> tuple[int, int]:
        n_cells, n_genes = self.group["X"].attrs["shape"]
        return int(n_cells), int(n_genes)

    @property
    def n_cells(self) -> int:
        return self.shape[0]

    @property
    def n_genes(self) -> int:
        return self.shape[1]

    @cached_property
    def total_counts(self) -> np.ndarray:
        return np.asarray(self.group["obs/total_counts"][...], dtype=np.float64)

    @cached_property
    def sample_codes(self) -> np.ndarray:
        return read_elem(self.group["obs/sample"]).codes

    def obs_column(self, name: str) -> np.ndarray:
        """One column of obs, read alone (not the whole table, barcodes included)."""
        return self.group[f"obs/{name}"][...]

    @cached_property
    def parameters(self) -> StoreParameters:
        stored = read_elem(self.group["uns/worker/parameters"])
        return StoreParameters(
            n_top_genes=int(stored["n_top_genes"]),
            n_comps=int(stored["n_comps"]),
            n_neighbors=int(stored["n_neighbors"]),
            louvain_resolution=float(stored["louvain_resolution"]),
            random_state=int(stored["random_state"]),
        )

    def x_pca(self) -> np.ndarray:
        return self.group["obsm/X_pca"][...]

    def pca_coordinates(self) -> np.ndarray:
        """The first two principal components of each cell (the second 0 where there is one)."""
        x_pca = self.group["obsm/X_pca"]
        first_two = x_pca[:, :2]
        coordinates = np.zeros((x_pca.shape[0], 2), dtype=np.float32)
        coordinates[:, : first_two.shape[1]] = first_two
        return coordinates

    def connectivities(self) -> sparse.csr_matrix:
        return read_elem(self.group["obsp/connectivities"])

    @cached_property
    def _cells(self) -> CompressedMatrix:
        return CompressedMatrix(self.group["X"])

    @cached_property
    def _genes(self) -> CompressedMatrix:
        return CompressedMatrix(self.group["layers/counts_by_gene"])

    def rows(self, start: int, stop: int) -> sparse.csr_array:
        """Raw counts of cells `start:stop` (cells x genes)."""
        return self._cells.major_range(start, stop)

    @property
    def gene_indptr(self) -> np.ndarray:
        """Where each gene's entries start in the gene-major copy (read once)."""
        return self._genes.indptr

    def gene_range(
        self, start: int, stop: int, indptr: np.ndarray | None = None
    ) -> sparse.csc_array:
        """Raw counts of genes `start:stop` in all cells (cells x genes); `indptr`, if given,
        is `gene_indptr[start:stop + 1]`, which saves reading it."""
        return self._genes.major_range(start, stop, indptr)

    def counts_by_gene(self, gene_indices: np.ndarray) -> sparse.csc_array:
        """Raw counts of the given genes in all cells (cells x genes), in their order."""
        return self._genes.majors(gene_indices)

    def log_normalised(self, gene_indices: np.ndarray) -> sparse.csc_array:
        """Log-normalised float32 values of the given genes in all cells (cells x genes)."""
        counts = self.counts_by_gene(gene_indices)
        values = log_normalise(counts.data, self.total_counts[counts.indices])
        return sparse.csc_array((values, counts.indices, counts.indptr), shape=counts.shape)

    def cached(self, path: str) -> np.ndarray | None:
        """The values of the result cached at `path` (an embedding, the doublet scores) if it is
        complete, else None.

        A cached result is one zarr array in a single chunk, so on S3 its values are one object:
        a reader sees one whole write or none. Its `completed_at` attribute is written last.
        Cached results are missing from the root's consolidated metadata, so they are opened by
        path, never through the root group.
        """
        try:
            array = zarr.open_array(self.group.store, path=path, mode="r")
        except NodeNotFoundError:
            return None
        return array[...] if COMPLETED in array.attrs else None

    def write_cached(self, path: str, values: np.ndarray) -> None:
        """Store `values` at `path` in this version, then mark them complete. Writers never
        delete, so concurrent identical requests at worst both write a whole array."""
        writable = zarr_store(self.url, self.aws, read_only=False)
        try:
            array = zarr.create_array(
                writable,
                name=path,
                shape=values.shape,
                dtype=values.dtype,
                chunks=values.shape,
                compressors=COMPRESSOR,
                attributes=element_attributes("array"),
            )
        except ContainsArrayError:
            # Another request is writing it, or one failed midway: same shape, so write over it.
            array = zarr.open_array(writable, path=path, mode="r+")
        array[...] = values
        array.update_attributes({COMPLETED: datetime.now(UTC).isoformat()})


_manifests: dict[tuple[str, str], tuple[float, dict | None]] = {}
_stores: OrderedDict[str, ExperimentStore] = OrderedDict()
_cache_lock = threading.Lock()


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
    return open_version(experiment_id, manifest["version"], url, aws)


def open_version(experiment_id: str, version: str, url: str, aws: AwsSettings) -> ExperimentStore:
    """A given version, opened once per process and kept (LRU)."""
    with _cache_lock:
        store = _stores.get(url)
        if store is not None:
            _stores.move_to_end(url)
            return store
    store = ExperimentStore(experiment_id, version, url, aws)
    with _cache_lock:
        _stores[url] = store
        while len(_stores) > OPEN_STORES_PER_PROCESS:
            _stores.popitem(last=False)
    return store


def forget_manifest(store_root: str, experiment_id: str) -> None:
    """Drop this process's cached manifest, after publishing a new version."""
    with _cache_lock:
        _manifests.pop((store_root, experiment_id), None)
