"""The ingest stage: the source's samples streamed once, in order, into `X` (CSR), with each
cell's QC and each gene's moments computed on the way."""

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import zarr

from worker.compute.qc import GeneMoments, RowBlockSummary, summarise_row_block
from worker.errors import UnsupportedFormat
from worker.store.build.plan import BuildOptions
from worker.store.sources import SourceSample
from worker.store.writer import AppendingWriter, create_sparse_group


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


def ingest(
    *, root: zarr.Group, samples: list[SourceSample], is_mito: np.ndarray, options: BuildOptions
) -> Ingested:
    n_cells = sum(sample.n_cells for sample in samples)
    n_genes = samples[0].n_genes
    matrix = create_sparse_group(
        root, "X", "csr_matrix", (n_cells, n_genes), 0, options.shard_elements
    )
    writer = AppendingWriter([matrix["data"], matrix["indices"]])
    row_lengths, totals, n_genes_by_cell, percent_mito, moments = [], [], [], [], None

    def take(summary: RowBlockSummary) -> None:
        nonlocal moments
        totals.append(summary.total_counts)
        n_genes_by_cell.append(summary.n_genes)
        percent_mito.append(summary.percent_mito)
        moments = summary.gene_moments if moments is None else moments.merge(summary.gene_moments)

    # A block's QC runs in a thread of its own while the next block is read and written (numpy
    # and numba release the GIL), in block order, at most two blocks behind.
    with ThreadPoolExecutor(1, thread_name_prefix="ingest-qc") as qc_thread:
        summaries: deque[Future[RowBlockSummary]] = deque()
        for sample in samples:
            for block in sample.row_blocks(options.rows_per_block):
                summaries.append(qc_thread.submit(summarise_row_block, block, is_mito))
                writer.append(
                    block.data.astype(np.float32, copy=False),
                    block.indices.astype(np.int32, copy=False),
                )
                row_lengths.append(np.diff(block.indptr))
                if len(summaries) > 1:
                    take(summaries.popleft().result())
        while summaries:
            take(summaries.popleft().result())
    nnz = writer.close()
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(row_lengths))]).astype(np.int64)
    if len(indptr) - 1 != n_cells or indptr[-1] != nnz:
        raise UnsupportedFormat(
            f"the source declares {n_cells} cells but its matrix streamed {len(indptr) - 1}"
        )
    matrix["indptr"].resize((len(indptr),))
    matrix["indptr"][:] = indptr
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
        total_counts=np.concatenate(totals),
        n_genes_by_cell=np.concatenate(n_genes_by_cell),
        percent_mito=np.concatenate(percent_mito),
        moments=moments,
        indptr=indptr,
    )
