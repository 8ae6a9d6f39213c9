"""The parallel passes over the ingested `X`, one Dask task per block: the covariance scan
(which also cuts each row block into pieces of the gene-major copy), the assembly of the
gene-major copy from those pieces, and the projection of the cells on the principal
components."""

from dataclasses import dataclass

import numpy as np
import zarr
from distributed import Client, Future, as_completed

from worker.compute.pca import (
    CovarianceSum,
    PrincipalComponents,
    ScaleParameters,
    project_block,
    shifted_block,
)
from worker.store.build.plan import BuildPlan
from worker.store.build.shuffle import assemble_segment, cut_row_block, decode_piece, encode_piece
from worker.store.locations import filesystem, zarr_store
from worker.store.sparse import CompressedMatrix
from worker.store.writer import GENE_MAJOR_CHUNK_ELEMENTS, create_sparse_group


@dataclass(frozen=True)
class Scaling:
    """How the PCA sees a cell: its highly variable genes' log values, scaled."""

    hvg_index: np.ndarray
    parameters: ScaleParameters


@dataclass(frozen=True)
class GeneLayout:
    """Where each gene's entries go in the gene-major copy, and the segments (whole shards)
    its assemblers write."""

    gene_indptr: np.ndarray
    segment_genes: list[tuple[int, int]]


def _rows(plan: BuildPlan, start: int, stop: int):
    group = zarr.open_group(zarr_store(plan.url, plan.aws, read_only=True), mode="r")
    return CompressedMatrix(group["X"]).major_range(start, stop)


def _scan_row_block(
    plan: BuildPlan,
    scaling: Scaling,
    layout: GeneLayout,
    *,
    block_index: int,
    start: int,
    stop: int,
    total_counts: np.ndarray,
) -> tuple[CovarianceSum, list[int]]:
    """Covariance sums of one row block, and its pieces written to scratch."""
    block = _rows(plan, start, stop)
    covariance = CovarianceSum.of_block(
        shifted_block(block, total_counts, scaling.hvg_index, scaling.parameters)
    )
    fs, scratch_path = filesystem(plan.scratch, plan.aws)
    pieces = {}
    cut = cut_row_block(
        block.indptr, block.indices, block.data, block.shape[1], layout.segment_genes
    )
    for segment, piece in cut:
        fs.makedirs(f"{scratch_path}/{segment}", exist_ok=True)
        pieces[segment] = encode_piece(piece)
    # All at once: on S3, one round trip for the block's pieces instead of one per segment.
    fs.pipe({f"{scratch_path}/{segment}/{block_index}": piece for segment, piece in pieces.items()})
    return covariance, list(pieces)


def scan(
    client: Client,
    plan: BuildPlan,
    *,
    scaling: Scaling,
    layout: GeneLayout,
    row_ranges: list[tuple[int, int]],
    total_counts: np.ndarray,
) -> tuple[CovarianceSum, dict[int, list[int]]]:
    """The covariance of the scaled cells, and the row blocks holding pieces of each segment."""
    futures = [
        client.submit(
            _scan_row_block,
            plan,
            scaling,
            layout,
            block_index=index,
            start=start,
            stop=stop,
            total_counts=total_counts[start:stop],
            pure=False,
        )
        for index, (start, stop) in enumerate(row_ranges)
    ]
    index_of = {future.key: index for index, future in enumerate(futures)}
    covariance = None
    blocks_by_segment: dict[int, list[int]] = {}
    for future in as_completed(futures):
        part, segments = future.result()
        covariance = part if covariance is None else covariance.merge(part)
        for segment in segments:
            blocks_by_segment.setdefault(segment, []).append(index_of[future.key])
        future.release()
    return covariance, blocks_by_segment


def _assemble_segment(
    plan: BuildPlan,
    *,
    segment: int,
    gene_indptr: np.ndarray,
    nnz: int,
    block_indices: list[int],
    block_starts: list[int],
) -> None:
    """Write the gene-major arrays' shard(s) of one segment from its pieces."""
    fs, scratch_path = filesystem(plan.scratch, plan.aws)
    paths = [f"{scratch_path}/{segment}/{index}" for index in block_indices]
    encoded = fs.cat(paths) if paths else {}
    # Decoded one at a time, in row order, as the assembly takes them.
    pieces = (
        (first_row, decode_piece(encoded.pop(path)))
        for first_row, path in sorted(zip(block_starts, paths, strict=True))
    )
    shard_elements = plan.options.shard_elements
    start = segment * shard_elements
    stop = min(start + shard_elements, nnz)
    data, indices = assemble_segment(pieces, gene_indptr, start, stop)
    group = zarr.open_group(zarr_store(plan.url, plan.aws, read_only=False), mode="r+")
    matrix = group["layers/counts_by_gene"]
    matrix["data"][start:stop] = data
    matrix["indices"][start:stop] = indices


def _project_row_block(
    plan: BuildPlan,
    scaling: Scaling,
    pcs: PrincipalComponents,
    *,
    start: int,
    stop: int,
    total_counts: np.ndarray,
) -> np.ndarray:
    block = _rows(plan, start, stop)
    return project_block(
        shifted_block(block, total_counts, scaling.hvg_index, scaling.parameters), pcs
    )


def project(
    client: Client,
    plan: BuildPlan,
    *,
    row_ranges: list[tuple[int, int]],
    total_counts: np.ndarray,
    scaling: Scaling,
    pcs: PrincipalComponents,
) -> np.ndarray:
    """`X_pca`, a task per row block, ahead of any other task (the assembly's)."""
    # Only what projecting needs: the components and the shifted values' mean.
    projection = PrincipalComponents(pcs.components, pcs.mean, np.empty(0), np.empty(0))
    projected = [
        client.submit(
            _project_row_block,
            plan,
            scaling,
            projection,
            start=start,
            stop=stop,
            total_counts=total_counts[start:stop],
            priority=1,
            pure=False,
        )
        for start, stop in row_ranges
    ]
    return np.concatenate(client.gather(projected))


def start_assembly(
    client: Client,
    plan: BuildPlan,
    *,
    root: zarr.Group,
    shape: tuple[int, int],
    layout: GeneLayout,
    blocks_by_segment: dict[int, list[int]],
    row_ranges: list[tuple[int, int]],
) -> list[Future]:
    """Start writing `layers/counts_by_gene`, a task per segment, behind any task submitted
    with a higher priority: it does not depend on the PCA, so it runs beside whatever follows
    (the neighbour graph and the clustering, which use one core)."""
    nnz = int(layout.gene_indptr[-1])
    matrix = create_sparse_group(
        root["layers"],
        "counts_by_gene",
        "csc_matrix",
        shape,
        nnz,
        plan.options.shard_elements,
        GENE_MAJOR_CHUNK_ELEMENTS,
    )
    matrix["indptr"][:] = layout.gene_indptr
    block_starts = [start for start, _ in row_ranges]
    return [
        client.submit(
            _assemble_segment,
            plan,
            segment=segment,
            gene_indptr=layout.gene_indptr[first : stop + 1],
            nnz=nnz,
            block_indices=blocks_by_segment.get(segment, []),
            block_starts=[block_starts[i] for i in blocks_by_segment.get(segment, [])],
            priority=-1,
            pure=False,
        )
        for segment, (first, stop) in enumerate(layout.segment_genes)
        if nnz
    ]
