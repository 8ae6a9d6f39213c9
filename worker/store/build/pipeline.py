"""Building an experiment store version from source samples, streaming.

Stages, none holding more than a bounded number of blocks:
1. ingest (a task per shard of `X` where the source is CSR, else one task in source order):
   `X` as CSR, per-cell QC and per-gene moments;
2. highly variable genes and the scale of each, from the moments;
3. covariance scan (a task per row block of `X`): the PCA covariance of the scaled highly
   variable genes, and the row block cut into pieces of the gene-major copy;
4. projection (a task per row block): `obsm/X_pca`;
5. the neighbour graph and the clustering, on the PCA (read back from the store), which fits
   in memory, in the orchestrating task, while the gene-major copy `layers/counts_by_gene` is
   assembled beside them (a task per segment of its arrays);
6. the tables and metadata.
"""

import contextlib
import ctypes
import posixpath
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr
from anndata.utils import make_index_unique
from distributed import Client, wait

from worker.compute.graph import PairEdges, cluster, neighbour_graph
from worker.compute.hvg import seurat_hvg
from worker.compute.pca import n_components, principal_components, scale_parameters
from worker.errors import UnsupportedFormat
from worker.store.build.ingest import ingest
from worker.store.build.passes import GeneLayout, Scaling, project, scan, start_assembly
from worker.store.build.plan import BuildOptions, BuildPlan, BuildSummary, Stages
from worker.store.build.shuffle import segment_gene_ranges
from worker.store.build.tables import write_graph, write_metadata, write_pca, write_tables
from worker.store.gene_blocks import major_ranges
from worker.store.locations import BUILDING, filesystem, zarr_store
from worker.store.sources import SourceSample
from worker.store.writer import StagedStore, element_attributes


def build_store(
    *,
    plan: BuildPlan,
    samples: list[SourceSample],
    client: Client,
    provenance: dict,
    report: Callable[[dict], None] | None = None,
) -> BuildSummary:
    """Write a complete AnnData zarr store at `plan.url` (which must not exist yet).

    `report` receives progress: `{"stage", "done", "total"}` while ingesting cells, and
    `{"stage", "stagesDone"}` as each of `STAGES` ends.
    """
    options = plan.options
    stages = Stages(plan.url, report)
    gene_ids = np.asarray(samples[0].gene_ids, dtype=str)
    gene_names = np.asarray(make_index_unique(pd.Index(samples[0].gene_names, dtype=str)), str)
    is_mito = np.char.startswith(gene_names, "MT-") | np.char.startswith(gene_names, "mt-")
    n_genes = len(gene_ids)

    # Opening with mode "w" clears the version's prefix: before the mark, not after.
    root = zarr.open_group(zarr_store(plan.url, plan.aws, read_only=False), mode="w", zarr_format=3)
    root.attrs.update(element_attributes("anndata"))
    root.create_group("layers", attributes=element_attributes("dict"))
    with _marked_as_building(plan):
        ingested = ingest(
            client,
            plan,
            root=root,
            samples=samples,
            is_mito=is_mito,
            progress=lambda done, total: stages.progress("ingest", done, total),
        )
        n_cells, nnz = ingested.n_cells, ingested.nnz
        if n_cells < 2:
            raise UnsupportedFormat(f"the source has {n_cells} cell(s); at least 2 are needed")
        stages.done("ingest", cells=n_cells, genes=n_genes, nnz=nnz)

        genes = seurat_hvg(ingested.moments, n_cells, options.n_top_genes)
        hvg_index = np.flatnonzero(genes["highly_variable"].to_numpy())
        if len(hvg_index) < 2:
            raise UnsupportedFormat(
                f"only {len(hvg_index)} gene(s) vary across cells; at least 2 are needed for a PCA"
            )
        scaling = Scaling(hvg_index, scale_parameters(ingested.moments, n_cells, hvg_index))
        row_ranges = major_ranges(ingested.indptr, options.pass_block_entries)
        gene_indptr = np.concatenate([[0], np.cumsum(ingested.moments.n_cells)]).astype(np.int64)
        layout = GeneLayout(gene_indptr, segment_gene_ranges(gene_indptr, options.shard_elements))
        stages.done(
            "highly variable genes", highly_variable=len(hvg_index), row_blocks=len(row_ranges)
        )

        covariance, blocks_by_segment = scan(
            client,
            plan,
            scaling=scaling,
            layout=layout,
            row_ranges=row_ranges,
            total_counts=ingested.total_counts,
        )
        pcs = principal_components(covariance, n_components(n_cells, len(hvg_index)))
        stages.done(
            "covariance scan", components=len(pcs.components), segments=len(layout.segment_genes)
        )

        x_pca = project(
            client,
            plan,
            row_ranges=row_ranges,
            total_counts=ingested.total_counts,
            scaling=scaling,
            pcs=pcs,
        )
        with _staged(root) as pca_root:
            write_pca(pca_root, x_pca=x_pca, pcs=pcs, hvg_index=hvg_index, n_genes=n_genes)
        # The graph stage reads it back, so that nothing holds it through the clustering.
        del x_pca
        stages.done("projection")

        assembly = start_assembly(
            client,
            plan,
            root=root,
            shape=(n_cells, n_genes),
            layout=layout,
            blocks_by_segment=blocks_by_segment,
            row_ranges=row_ranges,
        )
        try:
            labels = _graph_and_clusters(root, options)
            stages.done("neighbours and clustering", clusters=int(labels.max()) + 1)
        finally:
            # No task may write into a build that failed.
            wait(assembly)
        client.gather(assembly)
        fs, scratch_path = filesystem(plan.scratch, plan.aws)
        if fs.exists(scratch_path):
            fs.rm(scratch_path, recursive=True)
        stages.done("gene-major copy")

        sample_names = [sample.name for sample in samples]
        with _staged(root) as tables_root:
            write_tables(
                tables_root,
                ingested=ingested,
                genes=genes,
                gene_ids=gene_ids,
                gene_names=gene_names,
                sample_names=sample_names,
            )
            write_metadata(tables_root, pcs=pcs, options=options, provenance=provenance)
            zarr.consolidate_metadata(tables_root.store)
    stages.done("tables and metadata")
    return BuildSummary(n_cells, n_genes, nnz, sample_names, ingested.sample_codes, labels)


def _graph_and_clusters(root: zarr.Group, options: BuildOptions) -> np.ndarray:
    """The neighbour graph of the stored PCA, written as soon as it is known (its search
    structures and the PCA gone), and the cluster of each cell.

    The clustering holds the most of any step, some 143 bytes per edge: the edges and weights
    (16), igraph's graph (32), and its Louvain's copy of it and each level's structures (95);
    1.75 GB for the 12.2M edges of a million cells. The PCA (200 bytes per cell) goes before.
    """
    x_pca = root["obsm/X_pca"][...]
    n_cells = len(x_pca)
    if n_cells < options.min_cells_for_graph:
        empty = sp.csr_matrix((n_cells, n_cells), dtype=np.float32)
        with _staged(root) as graph_root:
            write_graph(graph_root, connectivities=empty, distances=empty)
        return np.zeros(n_cells, dtype=np.int64)
    _return_freed_memory()
    connectivities, distances = neighbour_graph(
        x_pca, n_neighbors=options.n_neighbors, random_state=options.random_state
    )
    del x_pca
    with _staged(root) as graph_root:
        write_graph(graph_root, connectivities=connectivities, distances=distances)
    # Only the edges go on to the clustering.
    pairs = PairEdges.of(connectivities)
    del connectivities, distances
    _return_freed_memory()
    labels = cluster(pairs, resolution=options.resolution, random_state=options.random_state)
    del pairs
    _return_freed_memory()
    return labels


@contextlib.contextmanager
def _staged(root: zarr.Group) -> Iterator[zarr.Group]:
    """The version's root through a store that keeps the metadata in memory until the block
    ends: anndata's writer checks and reads it hundreds of times, each a round trip on S3."""
    staged = StagedStore.over(root.store)
    yield zarr.open_group(staged, mode="r+", zarr_format=3)
    staged.flush()


@contextlib.contextmanager
def _marked_as_building(plan: BuildPlan) -> Iterator[None]:
    """Keep a fresh `_building` mark (the time) in the version while the block runs, and remove
    it at the end: a version whose mark grows old was left by a build that died."""
    fs, mark = filesystem(f"{plan.url}/{BUILDING}", plan.aws)
    fs.makedirs(posixpath.dirname(mark), exist_ok=True)
    finished = threading.Event()

    def mark_now() -> None:
        fs.pipe_file(mark, datetime.now(UTC).isoformat().encode())

    def keep_marking() -> None:
        while not finished.wait(plan.options.heartbeat_s):
            with contextlib.suppress(OSError):
                mark_now()

    mark_now()
    marker = threading.Thread(target=keep_marking, name="building-mark", daemon=True)
    marker.start()
    try:
        yield
    finally:
        finished.set()
        marker.join()
    fs.rm(mark)


def _return_freed_memory() -> None:
    """Give the memory that large steps freed back to the system: glibc keeps it otherwise (two
    GB after the neighbour search of a million cells), and the Dask worker's limit counts it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
