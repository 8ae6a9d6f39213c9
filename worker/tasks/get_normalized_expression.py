"""GetNormalizedExpression (Cellenics v2): the log-normalised values of the selected cells as
the platform's gzipped CSV (genes x cells, the bytes R's `data.table::fwrite` writes), made
gene block by gene block on the Dask workers and streamed into the result file, never whole."""

import itertools
import uuid
import zlib
from collections import deque
from typing import Literal

import numpy as np
from distributed import worker_client
from pydantic import BaseModel, ConfigDict, Field

from worker.compute.arithmetic import log_normalise
from worker.compute.fwrite import csv_rows, format_numbers
from worker.errors import EmptyCellSet, TaskFailed
from worker.settings import AwsSettings
from worker.store.cell_sets import CellSets
from worker.store.experiment import ExperimentStore, open_version
from worker.tasks.base import Task, TaskContext, V2TaskBody

# Uncompressed CSV text per Dask task: a gene's row is at least two bytes per selected cell.
BLOCK_BYTES = 32 * 1024 * 1024
# Blocks computing or waiting to be written at once: bounds the memory they hold.
BLOCKS_IN_FLIGHT = 4
# fwrite's default compression level.
GZIP_LEVEL = 6

CellSetKeys = list[str]


class SubsetBy(BaseModel):
    """The cell sets to export, by kind: within a kind their union, across kinds (those with
    keys) the intersection; no keys at all, every cell."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    louvain: CellSetKeys = Field(default_factory=list, max_length=10_000)
    sample: CellSetKeys = Field(default_factory=list, max_length=10_000)
    metadata: CellSetKeys = Field(default_factory=list, max_length=10_000)
    customCellSets: CellSetKeys = Field(default_factory=list, max_length=10_000)


class GetNormalizedExpressionBody(V2TaskBody):
    name: Literal["GetNormalizedExpression"]
    subsetBy: SubsetBy


def selected_cells(cell_sets: CellSets, subset_by: SubsetBy, n_cells: int) -> np.ndarray:
    """The cells the export holds, as a mask; raises CellSetNotFound for an unknown key."""
    selected = np.ones(n_cells, dtype=bool)
    for keys in subset_by.model_dump().values():
        if keys:
            selected &= cell_sets.union_mask(keys, n_cells)
    return selected


def gene_blocks(store: ExperimentStore, n_selected: int) -> list[tuple[int, int]]:
    """Consecutive gene ranges of about BLOCK_BYTES of text each: two bytes per zero, about ten
    per number."""
    entries = np.diff(store.group["layers/counts_by_gene/indptr"][:])
    row_bytes = 2 * n_selected + 10 * entries * (n_selected / store.n_cells) + 32
    ends = np.cumsum(row_bytes)
    cuts = np.searchsorted(ends, np.arange(BLOCK_BYTES, ends[-1], BLOCK_BYTES), side="right")
    bounds = np.unique(np.concatenate([[0], cuts, [store.n_genes]]))
    return [(int(start), int(stop)) for start, stop in itertools.pairwise(bounds)]


def gzip_member(text) -> bytes:
    """`text` as one gzip member; members written one after another are one gzip file."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(text) + compressor.flush()


def csv_block(
    experiment_id: str,
    version: str,
    url: str,
    aws: AwsSettings,
    first_gene: int,
    stop_gene: int,
    selected: np.ndarray,
) -> bytes:
    """The gzipped CSV rows of genes `first_gene:stop_gene` over the selected cells."""
    store = open_version(experiment_id, version, url, aws)
    counts = store.gene_range(first_gene, stop_gene)
    kept = selected[counts.indices]
    cells = counts.indices[kept]
    values = log_normalise(counts.data[kept], store.total_counts[cells])
    columns = (np.cumsum(selected) - 1)[cells]
    indptr = np.concatenate([[0], np.cumsum(kept)])[counts.indptr]
    chars, begins, lengths = format_numbers(values)
    gene_ids = store.var["gene_ids"].to_numpy()[first_gene:stop_gene]
    prefixes = [
        f"{first_gene + offset + 1},{gene_id},".encode() for offset, gene_id in enumerate(gene_ids)
    ]
    text = csv_rows(prefixes, indptr, columns, chars, begins, lengths, int(selected.sum()))
    return gzip_member(text)


def get_normalized_expression(context: TaskContext, body: GetNormalizedExpressionBody) -> int:
    """Writes the file; returns its size in bytes."""
    if context.result_file is None:
        raise TaskFailed("GetNormalizedExpression writes a file, and this request has no place")
    store = context.store()
    selected = selected_cells(context.cell_sets(), body.subsetBy, store.n_cells)
    n_selected = int(selected.sum())
    if n_selected == 0:
        raise EmptyCellSet("No cells match requested filters.")
    barcodes = store.obs["barcode"].to_numpy()[selected]
    # fwrite's header with row names and no quotes: an empty name, then the gene ids' " ".
    header = gzip_member(f", ,{','.join(barcodes)}\n".encode())
    del barcodes
    blocks = gene_blocks(store, n_selected)
    where = (store.experiment_id, store.version, store.url, store.aws)
    name = f"normalized-expression-block-{uuid.uuid4().hex}"
    with context.result_file.writer() as out, worker_client() as client:
        out.write(header)
        # hash=False: see map_gene_blocks.
        [selected_on_cluster] = client.scatter([selected], hash=False)
        pending: deque = deque()

        def write_oldest() -> None:
            out.write(pending.popleft().result())
            done = index + 1 - len(pending)
            context.report_progress(done, len(blocks), "Writing normalized expression")

        for index, (first, stop) in enumerate(blocks):
            pending.append(
                client.submit(
                    csv_block, *where, first, stop, selected_on_cluster, key=f"{name}-{index}"
                )
            )
            if len(pending) == BLOCKS_IN_FLIGHT:
                write_oldest()
        while pending:
            write_oldest()
    return out.bytes_written


V2_TASK = Task(
    name="GetNormalizedExpression",
    body=GetNormalizedExpressionBody,
    cacheable=True,
    compute=get_normalized_expression,
    writes_result_file=True,
)
