"""Streaming the gene-major copy of the counts (`layers/counts_by_gene`) through Dask: one task
per block of whole genes, for statistics that need every gene (differential expression, marker
genes)."""

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import zarr
from distributed import worker_client
from scipy import sparse

from worker.settings import AwsSettings
from worker.store.experiment import ExperimentStore, zarr_store
from worker.store.writer import CHUNK_ELEMENTS

# Half a shard of whole inner chunks: ranking a block holds some 60 bytes per entry, so a
# block of 32 Mi entries would need about 2 GB per task.
ENTRIES_PER_BLOCK = 8 * CHUNK_ELEMENTS


def major_ranges(indptr: np.ndarray, entries_per_block: int) -> list[tuple[int, int]]:
    """Consecutive ranges of the major axis of a compressed matrix, about
    `entries_per_block` entries each (a single gene or row may hold more)."""
    n_major = len(indptr) - 1
    targets = np.arange(entries_per_block, indptr[-1], entries_per_block)
    cuts = np.unique(np.concatenate([[0], np.searchsorted(indptr, targets), [n_major]]))
    return [(int(start), int(stop)) for start, stop in itertools.pairwise(cuts)]


def read_gene_block(
    url: str, aws: AwsSettings, first_gene: int, stop_gene: int
) -> sparse.csc_array:
    """Raw counts of genes `first_gene:stop_gene` for all cells (cells x genes, CSC)."""
    matrix = zarr.open_group(zarr_store(url, aws, read_only=True), mode="r")[
        "layers/counts_by_gene"
    ]
    indptr = matrix["indptr"][first_gene : stop_gene + 1]
    start, stop = int(indptr[0]), int(indptr[-1])
    return sparse.csc_array(
        (matrix["data"][start:stop], matrix["indices"][start:stop], indptr - start),
        shape=(matrix.attrs["shape"][0], stop_gene - first_gene),
    )


def _apply_to_block(
    kernel: Callable, url: str, aws: AwsSettings, first_gene: int, stop_gene: int, *shared: Any
) -> Any:
    return kernel(read_gene_block(url, aws, first_gene, stop_gene), *shared)


def map_gene_blocks(
    store: ExperimentStore,
    aws: AwsSettings,
    kernel: Callable,
    *shared: Any,
    entries_per_block: int = ENTRIES_PER_BLOCK,
) -> list[Any]:
    """`kernel(counts_by_gene_block, *shared)` for each block of genes, in gene order.

    Call it from a task running on a Dask worker. `kernel` must be importable by name; the
    `shared` arguments are scattered once rather than sent with every block.
    """
    indptr = store.group["layers/counts_by_gene/indptr"][:]
    with worker_client() as client:
        shared_futures = client.scatter(list(shared))
        futures = [
            client.submit(
                _apply_to_block, kernel, store.url, aws, first, stop, *shared_futures, pure=False
            )
            for first, stop in major_ranges(indptr, entries_per_block)
        ]
        return client.gather(futures)
