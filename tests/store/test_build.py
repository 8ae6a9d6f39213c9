"""Building a store from blocks: the multi-block paths, and memory bounded by the blocks."""

import dataclasses
import resource

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from distributed import Client, LocalCluster, worker_client
from fsspec.implementations.local import LocalFileSystem

from worker.datasets.synthetic import SyntheticDataset, as_source_sample
from worker.errors import UnsupportedFormat
from worker.settings import AwsSettings
from worker.store.build import BuildOptions, BuildPlan, build_store
from worker.store.build.shuffle import (
    assemble_segment,
    cut_row_block,
    decode_piece,
    encode_piece,
    segment_gene_ranges,
)
from worker.store.sources import open_source

SMALL_BLOCKS = BuildOptions(rows_per_block=97, pass_block_entries=5_000, shard_elements=4096)


def build(client, url, dataset, options):
    return build_samples(client, url, [as_source_sample(dataset)], options)


def build_samples(client, url, samples, options):
    return build_store(
        plan=BuildPlan(url=url, aws=AwsSettings(), options=options),
        samples=samples,
        client=client,
        provenance={},
    )


def write_csr_h5ad(path, counts: sp.csr_matrix, barcodes) -> None:
    """An h5ad whose X is `counts` stored exactly as given (sorted or not)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as file:
        file.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        matrix = file.create_group("X")
        matrix.attrs.update(
            {"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": counts.shape}
        )
        for name in ("data", "indices", "indptr"):
            matrix.create_dataset(name, data=getattr(counts, name))
        genes = [f"G{i}" for i in range(counts.shape[1])]
        ad.io.write_elem(file, "obs", pd.DataFrame(index=pd.Index(barcodes, dtype=str)))
        ad.io.write_elem(file, "var", pd.DataFrame({"gene_ids": genes}, index=genes))


def in_order(samples):
    """The samples with their counts readable only as a stream of row blocks."""
    return [dataclasses.replace(sample, open_entries=None) for sample in samples]


def three_samples(tmp_path) -> sp.csr_matrix:
    """Three h5ad samples in folders: cells that span shards, a shard where no cell starts,
    empty cells at shard and sample ends; their counts stacked."""
    parts = []
    for index, n_cells in enumerate([130, 5, 150]):
        dataset = SyntheticDataset(n_cells=n_cells, n_genes=600, seed=index, counts_per_cell=900)
        dense = sp.vstack(list(dataset.row_blocks())).toarray()
        dense[3] += 1  # a cell with every gene, over two shards
        dense[[0, 7 % n_cells, n_cells - 1]] = 0
        counts = sp.csr_matrix(dense)
        write_csr_h5ad(tmp_path / f"s{index}" / "counts.h5ad", counts, dataset.barcodes)
        parts.append(counts)
    return sp.vstack(parts, format="csr")


def assert_same_stores(actual: ad.AnnData, expected: ad.AnnData, counts) -> None:
    assert (counts != actual.X).nnz == 0 and actual.X.has_canonical_format
    assert (actual.layers["counts_by_gene"] != counts.tocsc()).nnz == 0
    pd.testing.assert_frame_equal(actual.obs, expected.obs)
    # Moments added up in another order: equal to the last bits.
    pd.testing.assert_frame_equal(actual.var, expected.var, rtol=1e-12)
    np.testing.assert_allclose(actual.obsm["X_pca"], expected.obsm["X_pca"], rtol=1e-4, atol=1e-4)


# Shards of 256 entries: many cells span two shards, one spans more.
SHARDED = BuildOptions(rows_per_block=37, pass_block_entries=20_000, shard_elements=256)


def test_sharded_ingest_equals_reading_in_order(tmp_path, dask_client):
    counts = three_samples(tmp_path)
    samples = open_source(LocalFileSystem(), str(tmp_path))
    assert [sample.name for sample in samples] == ["s0", "s1", "s2"]
    assert all(sample.open_entries is not None for sample in samples)
    summary = build_samples(dask_client, str(tmp_path / "sharded"), samples, SHARDED)
    build_samples(dask_client, str(tmp_path / "in_order"), in_order(samples), BuildOptions())
    assert summary.nnz == counts.nnz > 20 * SHARDED.shard_elements
    assert np.diff(counts.indptr).max() > 2 * SHARDED.shard_elements
    sharded = ad.read_zarr(tmp_path / "sharded")
    assert_same_stores(sharded, ad.read_zarr(tmp_path / "in_order"), counts)
    np.testing.assert_array_equal(sharded.obs["total_counts"], counts.sum(axis=1).A1)


# Cell 1 of a sample is among the first cells checked before the shards are read; cell 95
# is found by a shard's task.
@pytest.mark.parametrize("cell", [1, 95])
def test_sources_not_canonical_are_read_in_order(tmp_path, dask_client, cell):
    """Unsorted genes in one cell: either way the store holds the canonical counts."""
    counts = three_samples(tmp_path)
    sample = tmp_path / "s2" / "counts.h5ad"
    stored = sp.csr_matrix(ad.read_h5ad(sample).X)
    assert stored.indptr[cell + 1] - stored.indptr[cell] > 1
    row = slice(stored.indptr[cell], stored.indptr[cell + 1])
    stored.indices[row] = stored.indices[row][::-1].copy()
    stored.data[row] = stored.data[row][::-1].copy()
    write_csr_h5ad(sample, stored, ad.read_h5ad(sample).obs_names)
    samples = open_source(LocalFileSystem(), str(tmp_path))
    build_samples(dask_client, str(tmp_path / "store"), samples, SHARDED)
    build_samples(dask_client, str(tmp_path / "in_order"), in_order(samples), BuildOptions())
    expected = ad.read_zarr(tmp_path / "in_order")
    assert_same_stores(ad.read_zarr(tmp_path / "store"), expected, counts)


def test_bad_counts_in_a_shard_fail_the_build(tmp_path, dask_client):
    three_samples(tmp_path)
    sample = tmp_path / "s2" / "counts.h5ad"
    stored = sp.csr_matrix(ad.read_h5ad(sample).X)
    stored.data[stored.indptr[100] + 1] = -2
    write_csr_h5ad(sample, stored, ad.read_h5ad(sample).obs_names)
    samples = open_source(LocalFileSystem(), str(tmp_path))
    with pytest.raises(UnsupportedFormat, match="negative or non-integer"):
        build_samples(dask_client, str(tmp_path / "store"), samples, SHARDED)


def test_small_blocks_and_shards_give_the_same_store(tmp_path, dask_client):
    dataset = SyntheticDataset(n_cells=1500, n_genes=400, seed=2, counts_per_cell=800)
    build(dask_client, str(tmp_path / "default"), dataset, BuildOptions())
    summary = build(dask_client, str(tmp_path / "small"), dataset, SMALL_BLOCKS)
    default = ad.read_zarr(tmp_path / "default")
    small = ad.read_zarr(tmp_path / "small")
    expected = sp.vstack(list(dataset.row_blocks()), format="csr")
    assert summary.nnz == expected.nnz > 2 * SMALL_BLOCKS.shard_elements
    assert (expected != small.X).nnz == 0
    assert (small.layers["counts_by_gene"] != expected.tocsc()).nnz == 0
    assert small.obs.equals(default.obs)
    assert small.var.equals(default.var)
    np.testing.assert_allclose(small.obsm["X_pca"], default.obsm["X_pca"], rtol=1e-3, atol=1e-3)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _build_in_worker(url: str, dataset: SyntheticDataset, options: BuildOptions) -> tuple:
    """Runs on the Dask worker: the growth of its peak memory while building, and the nnz."""
    before = _peak_rss_bytes()
    with worker_client() as client:
        summary = build(client, url, dataset, options)
    return _peak_rss_bytes() - before, summary.nnz


@pytest.mark.slow
def test_peak_memory_grows_with_blocks_not_with_the_matrix(tmp_path):
    """One worker process does every step; a matrix twelve times larger, in blocks of the same
    size, barely moves its peak. (The neighbour graph, built on the PCA in memory by design,
    is left out here: it grows with cells, not with counts.)"""
    options = BuildOptions(
        rows_per_block=500,
        pass_block_entries=1 << 20,
        shard_elements=1 << 20,
        min_cells_for_graph=10**9,
    )

    def dataset(n_cells: int) -> SyntheticDataset:
        # Small generator blocks: the generator holds one entry per UMI of a block.
        return SyntheticDataset(
            n_cells=n_cells, n_genes=2000, seed=5, counts_per_cell=6000, rows_per_block=256
        )

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, memory_limit="3GiB",
                     dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        client.submit(_build_in_worker, str(tmp_path / "small"), dataset(1000), options).result()
        growth, nnz = client.submit(
            _build_in_worker, str(tmp_path / "large"), dataset(12_000), options
        ).result()
    matrix_bytes = nnz * 8  # float32 counts and int32 indices, as CSR in memory
    assert matrix_bytes > 100e6
    assert growth < matrix_bytes / 4, (growth, matrix_bytes)


@pytest.mark.parametrize(
    ("n_rows", "largest_count"),
    [(300, 80), (70_000, 80), (300, 100_000)],
    ids=["16-bit", "wide rows", "wide counts"],
)
def test_pieces_of_row_blocks_assemble_the_csc(n_rows, largest_count):
    """Two row blocks cut into the pieces of three segments, through their encoding, make
    the gene-major arrays of both blocks stacked."""
    blocks = [
        sp.random(n_rows, 50, density=0.05, random_state=seed, format="csr", dtype=np.float32)
        for seed in (1, 2)
    ]
    for block in blocks:
        block.data = np.ceil(block.data * largest_count)
    expected = sp.vstack(blocks, format="csr").tocsc()
    expected.sort_indices()
    gene_indptr = expected.indptr.astype(np.int64)
    segment_elements = expected.nnz // 3 + 1
    ranges = segment_gene_ranges(gene_indptr, segment_elements)
    pieces = [
        {segment: decode_piece(encode_piece(piece)) for segment, piece in
         cut_row_block(b.indptr, b.indices, b.data, 50, ranges)}
        for b in blocks
    ]  # fmt: skip
    data, indices = [], []
    for segment, (first, stop) in enumerate(ranges):
        start = segment * segment_elements
        part = assemble_segment(
            [(index * n_rows, by_segment[segment]) for index, by_segment in enumerate(pieces)],
            gene_indptr[first : stop + 1],
            start,
            min(start + segment_elements, expected.nnz),
        )
        data.append(part[0])
        indices.append(part[1])
    np.testing.assert_array_equal(np.concatenate(data), expected.data)
    np.testing.assert_array_equal(np.concatenate(indices), expected.indices)
