"""The ingest stage: the source's samples read once into `X` (CSR), with each cell's QC and
each gene's moments computed on the way.

Samples stored as CSR (h5ad, Cell Ranger h5) are read in parallel, a Dask task per shard of
`X`: their `indptr` says up front where each cell's entries go, so each task reads the entries
of its shard, writes that shard whole, and summarises the cells that start in it. Other
sources (and CSR sources that turn out not to be canonical) stream once, in order, in one task.
"""

import contextlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import zarr
from distributed import Client, as_completed
from scipy import sparse

from worker.compute.qc import GeneMoments, RowBlockSummary, summarise_row_block
from worker.errors import UnsupportedFormat
from worker.store.build.plan import BuildOptions, BuildPlan
from worker.store.locations import zarr_store
from worker.store.sources import SourceSample
from worker.store.sources.sample import StoredEntries
from worker.store.writer import AppendingWriter, create_sparse_group

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ingested:
    barcodes: np.ndarray
    sample_codes: np.ndarray
    total_counts: np.ndarray
    n_genes_by_cell: np.ndarray
    percent_mito: np.ndarray
    moments: GeneMoments
    indptr: np.ndarray

    @property
    def n_cells(self) -> int:
        return len(self.barcodes)

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])


class _NotCanonical(Exception):
    """A cell's stored entries are unsorted, repeated or zero: its canonical entries are not
    where the source's indptr puts them."""


def ingest(
    client: Client,
    plan: BuildPlan,
    *,
    root: zarr.Group,
    samples: list[SourceSample],
    is_mito: np.ndarray,
    progress: Callable[[int, int], None],
) -> Ingested:
    """`X` written, and what the later stages need of each cell and gene; `progress` receives
    (cells done, cells) as shards are written."""
    if all(sample.open_entries is not None for sample in samples):
        try:
            summary, indptr = _ingest_by_shard(
                client, plan, root=root, samples=samples, is_mito=is_mito, progress=progress
            )
        except _NotCanonical as exc:
            log.info("prepare %s: reading the samples in order: %s", plan.url, exc)
            del root["X"]
        else:
            return _ingested(samples, summary, indptr)
    summary, indptr = _ingest_in_order(
        root=root, samples=samples, is_mito=is_mito, options=plan.options
    )
    return _ingested(samples, summary, indptr)


def _ingested(samples: list[SourceSample], summary: RowBlockSummary, indptr: np.ndarray):
    if len(samples) > 1:
        barcodes = np.concatenate(
            [np.char.add(f"{sample.name}_", sample.barcodes.astype(str)) for sample in samples]
        )
    else:
        barcodes = samples[0].barcodes.astype(str)
    if len(np.unique(barcodes)) != len(barcodes):
        raise UnsupportedFormat("the source's barcodes are not unique within a sample")
    return Ingested(
        barcodes=barcodes,
        sample_codes=np.repeat(np.arange(len(samples)), [s.n_cells for s in samples]),
        total_counts=summary.total_counts,
        n_genes_by_cell=summary.n_genes,
        percent_mito=summary.percent_mito,
        moments=summary.gene_moments,
        indptr=indptr,
    )


def _joined(summaries: list[RowBlockSummary]) -> RowBlockSummary:
    """The summaries of consecutive row blocks as one, moments added in block order."""
    moments = summaries[0].gene_moments
    for summary in summaries[1:]:
        moments = moments.merge(summary.gene_moments)
    return RowBlockSummary(
        total_counts=np.concatenate([s.total_counts for s in summaries]),
        n_genes=np.concatenate([s.n_genes for s in summaries]),
        percent_mito=np.concatenate([s.percent_mito for s in summaries]),
        gene_moments=moments,
    )


def _ingest_in_order(
    *, root: zarr.Group, samples: list[SourceSample], is_mito: np.ndarray, options: BuildOptions
) -> tuple[RowBlockSummary, np.ndarray]:
    n_cells = sum(sample.n_cells for sample in samples)
    n_genes = samples[0].n_genes
    matrix = create_sparse_group(
        root, "X", "csr_matrix", (n_cells, n_genes), 0, options.shard_elements
    )
    writer = AppendingWriter([matrix["data"], matrix["indices"]])
    row_lengths: list[np.ndarray] = []
    summaries: list[RowBlockSummary] = []
    # A block's QC runs in a thread of its own while the next block is read and written (numpy
    # and numba release the GIL), in block order, at most two blocks behind.
    with ThreadPoolExecutor(1, thread_name_prefix="ingest-qc") as qc_thread:
        pending: deque[Future[RowBlockSummary]] = deque()
        for sample in samples:
            for block in sample.row_blocks(options.rows_per_block):
                pending.append(qc_thread.submit(summarise_row_block, block, is_mito))
                writer.append(
                    block.data.astype(np.float32, copy=False),
                    block.indices.astype(np.int32, copy=False),
                )
                row_lengths.append(np.diff(block.indptr))
                if len(pending) > 1:
                    summaries.append(pending.popleft().result())
        summaries.extend(future.result() for future in pending)
    nnz = writer.close()
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(row_lengths))]).astype(np.int64)
    if len(indptr) - 1 != n_cells or indptr[-1] != nnz:
        raise UnsupportedFormat(
            f"the source declares {n_cells} cells but its matrix streamed {len(indptr) - 1}"
        )
    _write_indptr(matrix, indptr)
    return _joined(summaries), indptr


def _write_indptr(matrix: zarr.Group, indptr: np.ndarray) -> None:
    matrix["indptr"].resize((len(indptr),))
    matrix["indptr"][:] = indptr


def _ingest_by_shard(
    client: Client,
    plan: BuildPlan,
    *,
    root: zarr.Group,
    samples: list[SourceSample],
    is_mito: np.ndarray,
    progress: Callable[[int, int], None],
) -> tuple[RowBlockSummary, np.ndarray]:
    indptrs = []
    for sample in samples:
        with sample.open_entries() as entries:
            indptrs.append(entries.indptr)
            # Most sources that are not canonical show it from their first cells: read them
            # in order at once, instead of after a parallel pass that finds it.
            first_cells = min(plan.options.rows_per_block, sample.n_cells)
            _check_canonical(
                entries.indptr[: first_cells + 1],
                *entries.read(0, int(entries.indptr[first_cells])),
                sample.n_genes,
            )
    sample_entries = np.cumsum([0, *(indptr[-1] for indptr in indptrs)])
    indptr = np.concatenate(
        [np.zeros(1, np.int64)]
        + [part[1:] + offset for part, offset in zip(indptrs, sample_entries, strict=False)]
    )
    n_cells, nnz = len(indptr) - 1, int(indptr[-1])
    matrix = create_sparse_group(
        root, "X", "csr_matrix", (n_cells, samples[0].n_genes), nnz, plan.options.shard_elements
    )
    reader = _EntryReader([sample.open_entries for sample in samples], sample_entries)
    # Each shard's task summarises the cells whose entries start in it (the last task also
    # the empty cells at the end); a cell may end in the next shard, whose task writes those
    # entries too.
    shard_starts = list(range(0, nnz, plan.options.shard_elements)) or [0]
    first_cells = [int(np.searchsorted(indptr[:-1], start, side="left")) for start in shard_starts]
    futures = [
        client.submit(
            _ingest_shard,
            plan,
            reader,
            is_mito,
            start=start,
            stop=min(start + plan.options.shard_elements, nnz),
            cell_indptr=indptr[first_cell : stop_cell + 1],
            pure=False,
        )
        for start, first_cell, stop_cell in zip(
            shard_starts, first_cells, [*first_cells[1:], n_cells], strict=True
        )
    ]
    # Every task ends before this returns or raises: none may write into a failed build or
    # into the `X` that reading in order writes again.
    cells_done = 0
    for future in as_completed(futures):
        if future.status == "finished":
            cells_done += len(future.result().total_counts)
            progress(cells_done, n_cells)
    summaries = client.gather(futures)
    _write_indptr(matrix, indptr)
    return _joined(summaries), indptr


def _check_canonical(indptr: np.ndarray, values: np.ndarray, genes: np.ndarray, n_genes: int):
    block = sparse.csr_array((values, genes, indptr - indptr[0]), shape=(len(indptr) - 1, n_genes))
    if not block.has_canonical_format or not values.all():
        raise _NotCanonical(
            f"the cells at entries {indptr[0]} to {indptr[-1]} are not canonical (sorted, "
            "unique, nonzero)"
        )
    return block


class _EntryReader:
    """The samples' stored entries as one run: entry `i` of sample `k` is entry
    `sample_entries[k] + i`. A sample is opened when first read, and stays open until
    `close`."""

    def __init__(self, openers: list[Callable], sample_entries: np.ndarray):
        self._openers = openers
        self._sample_entries = sample_entries
        self._open: dict[int, StoredEntries] = {}
        self._exit_stack = contextlib.ExitStack()

    def __getstate__(self) -> dict:
        return {"openers": self._openers, "sample_entries": self._sample_entries}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["openers"], state["sample_entries"])

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """float32 counts and int32 gene indices of entries `[start, stop)`."""
        values, genes = [], []
        for index, opener in enumerate(self._openers):
            offset, end = int(self._sample_entries[index]), int(self._sample_entries[index + 1])
            if end <= start or offset >= stop:
                continue
            if index not in self._open:
                self._open[index] = self._exit_stack.enter_context(opener())
            part_values, part_genes = self._open[index].read(
                max(start, offset) - offset, min(stop, end) - offset
            )
            values.append(part_values.astype(np.float32, copy=False))
            genes.append(part_genes.astype(np.int32, copy=False))
        if not values:
            return np.empty(0, np.float32), np.empty(0, np.int32)
        return np.concatenate(values), np.concatenate(genes)

    def close(self) -> None:
        self._exit_stack.close()
        self._open.clear()


def _ingest_shard(
    plan: BuildPlan,
    reader: _EntryReader,
    is_mito: np.ndarray,
    *,
    start: int,
    stop: int,
    cell_indptr: np.ndarray,
) -> RowBlockSummary:
    """Write entries `[start, stop)` of `X` and summarise the cells whose entries start there
    (`cell_indptr`: their entries' absolute positions)."""
    data = np.empty(stop - start, np.float32)
    indices = np.empty(stop - start, np.int32)
    n_cells = len(cell_indptr) - 1
    summaries = [_nothing_summarised(len(is_mito))]
    try:
        # The end of a cell that started in a shard before (all of the shard, if no cell
        # starts in it).
        tail_stop = min(int(cell_indptr[0]), stop)
        if tail_stop > start:
            data[: tail_stop - start], indices[: tail_stop - start] = reader.read(start, tail_stop)
        for first in range(0, n_cells, plan.options.rows_per_block):
            last = min(first + plan.options.rows_per_block, n_cells)
            block_indptr = cell_indptr[first : last + 1]
            block_start, block_stop = int(block_indptr[0]), int(block_indptr[-1])
            values, genes = reader.read(block_start, block_stop)
            block = _check_canonical(block_indptr, values, genes, len(is_mito))
            summaries.append(summarise_row_block(block, is_mito))
            kept = min(block_stop, stop) - block_start
            data[block_start - start :][:kept] = values[:kept]
            indices[block_start - start :][:kept] = genes[:kept]
    finally:
        reader.close()
    if stop > start:
        matrix = zarr.open_group(zarr_store(plan.url, plan.aws, read_only=False), mode="r+")["X"]
        matrix["data"][start:stop] = data
        matrix["indices"][start:stop] = indices
    return _joined(summaries)


def _nothing_summarised(n_genes: int) -> RowBlockSummary:
    """The summary of no cells: what a shard holding only the middle of one cell gives."""
    moments = GeneMoments(np.zeros(n_genes, np.int64), *(np.zeros(n_genes) for _ in range(4)))
    return RowBlockSummary(np.zeros(0), np.zeros(0, np.int64), np.zeros(0), moments)
