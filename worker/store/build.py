"""Building an experiment store version from source samples, streaming.

Passes over the counts, none holding more than a bounded number of blocks:
1. ingest (one task, in source order): write `X` as CSR, per-cell QC and per-gene moments;
2. scan (a task per row block of `X`): the PCA covariance of the scaled highly variable
   genes, and the row block cut into pieces for the gene-major copy;
3. assemble (a task per segment of the CSC arrays) and project (a task per row block), in
   parallel: `layers/counts_by_gene` and `obsm/X_pca`;
then the neighbour graph and clustering on the PCA, which fits in memory.
"""

import contextlib
import ctypes
import logging
import resource
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr
from anndata.io import write_elem
from anndata.utils import make_index_unique
from distributed import Client, as_completed

from worker.compute.graph import cluster, neighbour_graph
from worker.compute.hvg import seurat_hvg
from worker.compute.pca import (
    CovarianceSum,
    PrincipalComponents,
    ScaleParameters,
    n_components,
    principal_components,
    project_block,
    scale_parameters,
    scaled_block,
)
from worker.compute.qc import GeneMoments, RowBlockSummary, summarise_row_block
from worker.errors import UnsupportedFormat
from worker.settings import AwsSettings
from worker.store.experiment import filesystem, zarr_store
from worker.store.gene_blocks import major_ranges
from worker.store.shuffle import (
    assemble_segment,
    cut_row_block,
    decode_piece,
    encode_piece,
    segment_gene_ranges,
)
from worker.store.sources import SourceSample
from worker.store.writer import (
    GENE_MAJOR_CHUNK_ELEMENTS,
    SHARD_ELEMENTS,
    AppendingWriter,
    create_sparse_group,
)

log = logging.getLogger(__name__)

GROUP_ATTRIBUTES = {"encoding-type": "dict", "encoding-version": "0.1.0"}


@dataclass(frozen=True)
class BuildOptions:
    rows_per_block: int = 5_000
    # Row blocks of the parallel passes hold about this many entries (64 MB as float32+int32).
    pass_block_entries: int = 8 << 20
    shard_elements: int = SHARD_ELEMENTS
    n_top_genes: int = 2000
    n_neighbors: int = 15
    min_cells_for_graph: int = 30
    resolution: float = 1.0
    random_state: int = 0


@dataclass
class BuildSummary:
    n_cells: int
    n_genes: int
    nnz: int
    sample_names: list[str]
    sample_codes: np.ndarray = field(repr=False)
    cluster_labels: np.ndarray = field(repr=False)


@dataclass
class _Ingested:
    barcodes: np.ndarray
    sample_codes: np.ndarray
    total_counts: np.ndarray
    n_genes_by_cell: np.ndarray
    percent_mito: np.ndarray
    moments: GeneMoments
    indptr: np.ndarray


PROGRESS_TOPIC = "worker-prepare-progress"
STAGES = (
    "ingest",
    "highly variable genes",
    "covariance scan",
    "gene-major copy and projection",
    "neighbours and clustering",
    "tables and metadata",
)


class _Stages:
    """Logs each stage with its elapsed time, and reports progress to `report` if given."""

    def __init__(self, url: str, report: Callable[[dict], None] | None):
        self._url = url
        self._report = report or (lambda progress: None)
        self._started = time.monotonic()
        self._last = self._started

    def progress(self, stage: str, done: int, total: int) -> None:
        self._report({"stage": stage, "done": done, "total": total})

    def done(self, stage: str, **counts) -> None:
        now = time.monotonic()
        details = " ".join(f"{name}={value}" for name, value in counts.items())
        # The peak memory of this process (the one orchestrating) so far, for capacity planning.
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        log.info(
            "prepare %s: %s done in %.1fs (%.1fs in all, peak %.0f MiB) %s",
            self._url, stage, now - self._last, now - self._started, peak_mib, details,
        )  # fmt: skip
        self._last = now
        self._report({"stage": stage, "stagesDone": STAGES.index(stage) + 1})


def build_store(
    url: str,
    samples: list[SourceSample],
    aws: AwsSettings,
    client: Client,
    options: BuildOptions,
    provenance: dict,
    report: Callable[[dict], None] | None = None,
) -> BuildSummary:
    """Write a complete AnnData zarr store at `url` (which must not exist yet).

    `report` receives progress: `{"stage", "done", "total"}` while ingesting cells, and
    `{"stage", "stagesDone"}` as each of `STAGES` ends.
    """
    stages = _Stages(url, report)
    root = zarr.open_group(zarr_store(url, aws, read_only=False), mode="w", zarr_format=3)
    root.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
    gene_ids = np.asarray(samples[0].gene_ids, dtype=str)
    gene_names = np.asarray(make_index_unique(pd.Index(samples[0].gene_names, dtype=str)))
    is_mito = np.char.startswith(gene_names.astype(str), "MT-") | np.char.startswith(
        gene_names.astype(str), "mt-"
    )
    n_genes = len(gene_ids)

    ingested = _ingest(root, samples, is_mito, options, stages)
    n_cells, nnz = len(ingested.barcodes), int(ingested.indptr[-1])
    if n_cells < 2:
        raise UnsupportedFormat(f"the source has {n_cells} cell(s); at least 2 are needed")
    stages.done("ingest", cells=n_cells, genes=n_genes, nnz=nnz)

    genes = seurat_hvg(ingested.moments, n_cells, options.n_top_genes)
    hvg_index = np.flatnonzero(genes["highly_variable"].to_numpy())
    if len(hvg_index) < 2:
        raise UnsupportedFormat(
            f"only {len(hvg_index)} gene(s) vary across cells; at least 2 are needed for a PCA"
        )
    scale = scale_parameters(ingested.moments, n_cells, hvg_index)
    row_ranges = major_ranges(ingested.indptr, options.pass_block_entries)
    gene_indptr = np.concatenate([[0], np.cumsum(ingested.moments.n_cells)]).astype(np.int64)
    gene_ranges = segment_gene_ranges(gene_indptr, options.shard_elements)
    stages.done("highly variable genes", highly_variable=len(hvg_index), row_blocks=len(row_ranges))

    scratch = f"{url}/_scratch"
    covariance, pieces_by_segment = _scan(
        client, url, aws, row_ranges, ingested.total_counts, hvg_index, scale, gene_ranges, scratch
    )
    pcs = principal_components(covariance, n_components(n_cells, len(hvg_index)))
    stages.done("covariance scan", components=len(pcs.components), segments=len(gene_ranges))

    x_pca = _assemble_and_project(
        client, url, aws, root, (n_cells, n_genes), nnz, gene_indptr, gene_ranges,
        pieces_by_segment, row_ranges, ingested.total_counts, hvg_index, scale, pcs, scratch,
        options,
    )  # fmt: skip
    fs, scratch_path = filesystem(scratch, aws)
    if fs.exists(scratch_path):
        fs.rm(scratch_path, recursive=True)
    stages.done("gene-major copy and projection")

    if n_cells >= options.min_cells_for_graph:
        _return_freed_memory()
        connectivities, distances = neighbour_graph(
            x_pca, n_neighbors=options.n_neighbors, random_state=options.random_state
        )
        _return_freed_memory()
        labels = cluster(
            connectivities, resolution=options.resolution, random_state=options.random_state
        )
        _return_freed_memory()
    else:
        connectivities = distances = sp.csr_matrix((n_cells, n_cells), dtype=np.float32)
        labels = np.zeros(n_cells, dtype=np.int64)
    stages.done("neighbours and clustering", clusters=int(labels.max()) + 1)

    sample_names = [sample.name for sample in samples]
    _write_tables(root, ingested, genes, gene_ids, gene_names, sample_names)
    loadings = np.zeros((n_genes, len(pcs.components)), dtype=np.float32)
    loadings[hvg_index] = pcs.components.T
    write_elem(root, "obsm", {"X_pca": x_pca})
    write_elem(root, "varm", {"PCs": loadings})
    write_elem(root, "obsp", {"connectivities": connectivities, "distances": distances})
    write_elem(root, "varp", {})
    write_elem(
        root,
        "uns",
        {
            "pca": {"variance": pcs.variance, "variance_ratio": pcs.variance_ratio},
            "worker": {
                "format": 1,
                "parameters": {
                    "n_top_genes": options.n_top_genes,
                    "n_comps": len(pcs.components),
                    "n_neighbors": options.n_neighbors,
                    "louvain_resolution": options.resolution,
                    "random_state": options.random_state,
                },
                "provenance": provenance,
            },
        },
    )
    zarr.consolidate_metadata(root.store)
    stages.done("tables and metadata")
    return BuildSummary(n_cells, n_genes, nnz, sample_names, ingested.sample_codes, labels)


def _return_freed_memory() -> None:
    """Give the memory that large steps freed back to the system: glibc keeps it otherwise (two
    GB after the neighbour search of a million cells), and the Dask worker's limit counts it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _ingest(
    root: zarr.Group,
    samples: list[SourceSample],
    is_mito: np.ndarray,
    options: BuildOptions,
    stages: _Stages,
) -> _Ingested:
    n_cells = sum(sample.n_cells for sample in samples)
    n_genes = samples[0].n_genes
    root.create_group("layers", attributes=GROUP_ATTRIBUTES)
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
    return _Ingested(
        barcodes=barcodes,
        sample_codes=np.repeat(np.arange(len(samples)), [s.n_cells for s in samples]),
        total_counts=np.concatenate(totals),
        n_genes_by_cell=np.concatenate(n_genes_by_cell),
        percent_mito=np.concatenate(percent_mito),
        moments=moments,
        indptr=indptr,
    )


def read_rows(group: zarr.Group, start: int, stop: int) -> sp.csr_matrix:
    """Rows `start:stop` of the store's `X` as CSR."""
    matrix = group["X"]
    indptr = matrix["indptr"][start : stop + 1]
    first, last = int(indptr[0]), int(indptr[-1])
    return sp.csr_matrix(
        (matrix["data"][first:last], matrix["indices"][first:last], indptr - first),
        shape=(stop - start, matrix.attrs["shape"][1]),
    )


def _open(url: str, aws: AwsSettings) -> zarr.Group:
    return zarr.open_group(zarr_store(url, aws, read_only=False), mode="r+")


def _scan_row_block(
    url: str, aws: AwsSettings, block_index: int, start: int, stop: int,
    total_counts: np.ndarray, hvg_index: np.ndarray, mean: np.ndarray, std: np.ndarray,
    gene_ranges: list[tuple[int, int]], scratch: str,
) -> tuple[int, np.ndarray, np.ndarray, list[int]]:  # fmt: skip
    """Covariance sums of one row block, and its pieces written to scratch."""
    block = read_rows(_open(url, aws), start, stop)
    covariance = CovarianceSum.of_block(
        scaled_block(block, total_counts, hvg_index, ScaleParameters(mean, std))
    )
    fs, scratch_path = filesystem(scratch, aws)
    segments = []
    for segment, piece in cut_row_block(block, gene_ranges):
        fs.makedirs(f"{scratch_path}/{segment}", exist_ok=True)
        fs.pipe_file(f"{scratch_path}/{segment}/{block_index}", encode_piece(piece))
        segments.append(segment)
    return covariance.n_cells, covariance.column_sum, covariance.gram, segments


def _scan(client, url, aws, row_ranges, total_counts, hvg_index, scale, gene_ranges, scratch):
    futures = [
        client.submit(
            _scan_row_block,
            url,
            aws,
            index,
            start,
            stop,
            total_counts[start:stop],
            hvg_index,
            scale.mean,
            scale.std,
            gene_ranges,
            scratch,
            pure=False,
        )
        for index, (start, stop) in enumerate(row_ranges)
    ]
    index_of = {future.key: index for index, future in enumerate(futures)}
    covariance = None
    pieces_by_segment: dict[int, list[int]] = {}
    for future in as_completed(futures):
        n_rows, column_sum, gram, segments = future.result()
        part = CovarianceSum(n_rows, column_sum, gram)
        covariance = part if covariance is None else covariance.merge(part)
        for segment in segments:
            pieces_by_segment.setdefault(segment, []).append(index_of[future.key])
        future.release()
    return covariance, pieces_by_segment


def _assemble_segment(
    url: str, aws: AwsSettings, segment: int, gene_indptr: np.ndarray, nnz: int,
    block_indices: list[int], block_starts: list[int], scratch: str, shard_elements: int,
) -> None:  # fmt: skip
    """Write the CSC arrays' shard(s) of one segment from its pieces."""
    fs, scratch_path = filesystem(scratch, aws)
    paths = [f"{scratch_path}/{segment}/{index}" for index in block_indices]
    encoded = fs.cat(paths) if paths else {}
    # Decoded one at a time, in row order, as the assembly takes them.
    pieces = (
        (first_row, decode_piece(encoded.pop(path)))
        for first_row, path in sorted(zip(block_starts, paths, strict=True))
    )
    start = segment * shard_elements
    stop = min(start + shard_elements, nnz)
    data, indices = assemble_segment(pieces, gene_indptr, start, stop)
    matrix = _open(url, aws)["layers/counts_by_gene"]
    matrix["data"][start:stop] = data
    matrix["indices"][start:stop] = indices


def _project_row_block(
    url: str, aws: AwsSettings, start: int, stop: int, total_counts: np.ndarray,
    hvg_index: np.ndarray, mean: np.ndarray, std: np.ndarray, components: np.ndarray,
    scaled_mean: np.ndarray,
) -> np.ndarray:  # fmt: skip
    block = read_rows(_open(url, aws), start, stop)
    scaled = scaled_block(block, total_counts, hvg_index, ScaleParameters(mean, std))
    return project_block(
        scaled, PrincipalComponents(components, scaled_mean, np.empty(0), np.empty(0))
    )


def _assemble_and_project(
    client, url, aws, root, shape, nnz, gene_indptr, gene_ranges, pieces_by_segment, row_ranges,
    total_counts, hvg_index, scale, pcs, scratch, options,
) -> np.ndarray:  # fmt: skip
    matrix = create_sparse_group(
        root["layers"], "counts_by_gene", "csc_matrix", shape, nnz, options.shard_elements,
        GENE_MAJOR_CHUNK_ELEMENTS,
    )  # fmt: skip
    matrix["indptr"][:] = gene_indptr
    block_starts = [start for start, _ in row_ranges]
    assembled = [
        client.submit(
            _assemble_segment,
            url,
            aws,
            segment,
            gene_indptr[first : stop + 1],
            nnz,
            pieces_by_segment.get(segment, []),
            [block_starts[i] for i in pieces_by_segment.get(segment, [])],
            scratch,
            options.shard_elements,
            pure=False,
        )
        for segment, (first, stop) in enumerate(gene_ranges)
        if nnz
    ]
    projected = [
        client.submit(
            _project_row_block,
            url,
            aws,
            start,
            stop,
            total_counts[start:stop],
            hvg_index,
            scale.mean,
            scale.std,
            pcs.components,
            pcs.mean,
            pure=False,
        )
        for start, stop in row_ranges
    ]
    x_pca = np.concatenate(client.gather(projected))
    client.gather(assembled)
    return x_pca


def _write_tables(root, ingested, genes, gene_ids, gene_names, sample_names) -> None:
    obs = pd.DataFrame(
        {
            "barcode": ingested.barcodes,
            "sample": pd.Categorical.from_codes(ingested.sample_codes, categories=sample_names),
            "total_counts": ingested.total_counts.astype(np.float32),
            "n_genes": ingested.n_genes_by_cell.astype(np.int32),
            "percent_mito": ingested.percent_mito.astype(np.float32),
        },
        index=pd.Index(ingested.barcodes, name="cell"),
    )
    var = pd.DataFrame(
        {
            "gene_ids": gene_ids,
            "gene_names": gene_names,
            "n_cells": ingested.moments.n_cells.astype(np.int64),
            "means": genes["means"].to_numpy(dtype=np.float32),
            "dispersions": genes["dispersions"].to_numpy(dtype=np.float32),
            "dispersions_norm": genes["dispersions_norm"].to_numpy(dtype=np.float32),
            "highly_variable": genes["highly_variable"].to_numpy(dtype=bool),
        },
        index=pd.Index(gene_names, name="gene"),
    )
    write_elem(root, "obs", obs)
    write_elem(root, "var", var)
