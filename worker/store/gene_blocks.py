"""Streaming the gene-major copy of the counts (`layers/counts_by_gene`) through Dask: one task
per block of whole genes, for statistics that need every gene (differential expression, marker
genes)."""

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
from distributed import worker_client

from worker.settings import AwsSettings
from worker.store.experiment import ExperimentStore, open_version
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


def _apply_to_block(
    kernel: Callable,
    experiment_id: str,
    version: str,
    url: str,
    aws: AwsSettings,
    first_gene: int,
    stop_gene: int,
    indptr: np.ndarray,
    *shared: Any,
) -> Any:
    store = open_version(experiment_id, version, url, aws)
    return kernel(store.gene_range(first_gene, stop_gene, indptr), *shared)


def map_gene_blocks(
    store: ExperimentStore,
    kernel: Callable,
    *shared: Any,
    entries_per_block: int = ENTRIES_PER_BLOCK,
) -> list[Any]:
    """`kernel(counts_by_gene_block, *shared)` for each block of genes, in gene order.

    Call it from a task running on a Dask worker. `kernel` must be importable by name; the
    `shared` arguments are scattered once rather than sent with every block.
    """
    indptr = store.gene_indptr
    where = (store.experiment_id, store.version, store.url, store.aws)
    with worker_client() as client:
        # Keys of their own, not hashes of the content: the same arguments scattered again
        # while the previous request's copy is being released lose the new copy with it, and
        # the blocks fail with "lost dependencies" (dask/distributed#8576; 1 request in 300
        # back to back).
        shared_futures = client.scatter(list(shared), hash=False)
        # Each block gets its part of indptr, so that it reads only its entries: on S3, one
        # round trip.
        futures = [
            client.submit(
                _apply_to_block,
                kernel,
                *where,
                first,
                stop,
                indptr[first : stop + 1],
                *shared_futures,
                pure=False,
            )
            for first, stop in major_ranges(indptr, entries_per_block)
        ]
        return client.gather(futures)
