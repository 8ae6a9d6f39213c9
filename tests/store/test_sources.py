import gzip
import shutil
from pathlib import Path

import anndata
import fsspec
import h5py
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse

from worker.datasets.synthetic import SyntheticDataset, write_10x_mtx, write_h5ad
from worker.errors import SourceNotFound, UnsupportedFormat
from worker.settings import AwsSettings
from worker.store.sources import SourceSample, hdf5, mtx, open_source

TENX = Path(__file__).resolve().parents[1] / "data" / "10x"
LOCAL = fsspec.filesystem("file")


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Make the small test files span several read chunks."""
    monkeypatch.setattr(mtx, "ENTRIES_PER_CHUNK", 1000)
    monkeypatch.setattr(hdf5, "NONZEROS_PER_CHUNK", 500)
    monkeypatch.setattr(hdf5, "DENSE_VALUES_PER_READ", 1000)


def read_counts(sample: SourceSample, rows_per_block: int = 100) -> sparse.csr_matrix:
    blocks = list(sample.row_blocks(rows_per_block))
    for block in blocks[:-1]:
        assert block.shape[0] == rows_per_block
    for block in blocks:
        assert block.dtype == np.float32
        assert block.has_canonical_format
        assert np.all(block.data != 0)
    return sparse.vstack(blocks, format="csr")


def canonical(matrix) -> sparse.csr_matrix:
    counts = sparse.csr_matrix(matrix, dtype=np.float32)
    counts.sum_duplicates()
    return counts


def assert_same_counts(actual: sparse.csr_matrix, expected) -> None:
    expected = canonical(expected)
    assert actual.shape == expected.shape
    assert (actual != expected).nnz == 0


def open_one(path, format="auto") -> SourceSample:
    [sample] = open_source(LOCAL, str(path), format)
    return sample


@pytest.mark.parametrize("folder", ["v2_mtx", "v3_mtx_gz"])
def test_mtx_folder_equals_scanpy(folder):
    sample = open_one(TENX / folder)
    expected = sc.read_10x_mtx(TENX / folder, var_names="gene_ids")
    assert sample.name == folder
    assert (sample.n_cells, sample.n_genes) == expected.shape
    assert_same_counts(read_counts(sample), expected.X)
    np.testing.assert_array_equal(sample.barcodes, expected.obs_names)
    np.testing.assert_array_equal(sample.gene_ids, expected.var_names)
    np.testing.assert_array_equal(sample.gene_names, expected.var["gene_symbols"])


@pytest.mark.parametrize(
    "file", ["v2_filtered_gene_bc_matrices.h5", "v3_filtered_feature_bc_matrix.h5"]
)
def test_10x_h5_equals_scanpy(file):
    sample = open_one(TENX / file, "10x_h5")
    expected = sc.read_10x_h5(TENX / file)
    assert sample.name == file.removesuffix(".h5")
    assert (sample.n_cells, sample.n_genes) == expected.shape
    assert_same_counts(read_counts(sample), expected.X)
    np.testing.assert_array_equal(sample.barcodes, expected.obs_names)
    np.testing.assert_array_equal(sample.gene_ids, expected.var["gene_ids"])
    np.testing.assert_array_equal(sample.gene_names, expected.var_names)


def test_10x_h5_keeps_only_gene_expression(tmp_path):
    path = tmp_path / "with_antibodies.h5"
    shutil.copy(TENX / "v3_filtered_feature_bc_matrix.h5", path)
    with h5py.File(path, "r+") as file:
        feature_types = file["matrix/features/feature_type"]
        types = feature_types[:]
        types[:7] = b"Antibody Capture"
        feature_types[...] = types
    expected = sc.read_10x_h5(path)
    sample = open_one(path)
    assert sample.n_genes == 507 - 7
    assert_same_counts(read_counts(sample), expected.X)
    np.testing.assert_array_equal(sample.gene_ids, expected.var["gene_ids"])


def small_counts(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = rng.negative_binomial(1, 0.5, (230, 40)).astype(np.float32)
    counts[rng.random(counts.shape) < 0.5] = 0
    return counts


@pytest.mark.parametrize("where", ["dense X", "csr X", "csc X", "raw.X", "layers counts", "int X"])
def test_h5ad_counts(tmp_path, where):
    counts = small_counts()
    normalised = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4)
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(counts.shape[0])])
    var = pd.DataFrame(
        {"gene_ids": [f"ENSG{i:011d}" for i in range(counts.shape[1])]},
        index=[f"G{i}" for i in range(counts.shape[1])],
    )
    adata = {
        "dense X": lambda: anndata.AnnData(counts, obs, var),
        "csr X": lambda: anndata.AnnData(sparse.csr_matrix(counts), obs, var),
        "csc X": lambda: anndata.AnnData(sparse.csc_matrix(counts), obs, var),
        "int X": lambda: anndata.AnnData(sparse.csr_matrix(counts.astype(np.int64)), obs, var),
        "raw.X": lambda: anndata.AnnData(normalised, obs, var),
        "layers counts": lambda: anndata.AnnData(
            sparse.csr_matrix(normalised), obs, var, layers={"counts": sparse.csr_matrix(counts)}
        ),
    }[where]()
    if where == "raw.X":
        adata.raw = anndata.AnnData(sparse.csr_matrix(counts), obs, var)
    adata.write_h5ad(tmp_path / "sample.h5ad")

    sample = open_one(tmp_path / "sample.h5ad", "h5ad")
    assert sample.name == "sample"
    assert_same_counts(read_counts(sample, rows_per_block=50), counts)
    np.testing.assert_array_equal(sample.barcodes, obs.index)
    np.testing.assert_array_equal(sample.gene_ids, var["gene_ids"])
    np.testing.assert_array_equal(sample.gene_names, var.index)


def test_h5ad_with_normalised_counts_only(tmp_path):
    counts = small_counts()
    anndata.AnnData(np.log1p(counts)).write_h5ad(tmp_path / "normalised.h5ad")
    sample = open_one(tmp_path / "normalised.h5ad")
    with pytest.raises(UnsupportedFormat, match="looks normalised"):
        read_counts(sample)


def copy_mtx_folder(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    target.chmod(0o755)
    for file in target.iterdir():
        file.chmod(0o644)
    return target


def rewrite_matrix(folder: Path, change) -> None:
    """Replace the entry lines of folder's matrix.mtx[.gz] by change(lines)."""
    [path] = folder.glob("matrix.mtx*")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as file:
        lines = file.read().splitlines(keepends=True)
    n_header = next(i for i, line in enumerate(lines) if not line.startswith("%")) + 1
    with opener(path, "wt") as file:
        file.writelines(lines[:n_header] + change(lines[n_header:]))


def test_unsorted_mtx_gives_the_same_counts(tmp_path):
    folder = copy_mtx_folder(TENX / "v3_mtx_gz", tmp_path / "shuffled")
    rng = np.random.default_rng(0)
    rewrite_matrix(folder, lambda entries: list(rng.permutation(entries)))
    expected = read_counts(open_one(TENX / "v3_mtx_gz"))
    assert_same_counts(read_counts(open_one(folder), rows_per_block=64), expected)


def test_samples_of_a_prefix_come_sorted_by_folder_name(tmp_path):
    copy_mtx_folder(TENX / "v3_mtx_gz", tmp_path / "b_mtx")
    (tmp_path / "a_h5").mkdir()
    shutil.copy(TENX / "v3_filtered_feature_bc_matrix.h5", tmp_path / "a_h5" / "matrix.h5")
    samples = open_source(LOCAL, f"{tmp_path}/")
    assert [sample.name for sample in samples] == ["a_h5", "b_mtx"]
    assert_same_counts(read_counts(samples[0]), read_counts(samples[1]))


def test_samples_with_different_genes(tmp_path):
    copy_mtx_folder(TENX / "v2_mtx", tmp_path / "a")
    copy_mtx_folder(TENX / "v3_mtx_gz", tmp_path / "b")
    with pytest.raises(UnsupportedFormat, match="different gene"):
        open_source(LOCAL, str(tmp_path))


def test_mismatched_barcodes(tmp_path):
    folder = copy_mtx_folder(TENX / "v2_mtx", tmp_path / "sample")
    barcodes = (folder / "barcodes.tsv").read_text().splitlines(keepends=True)
    (folder / "barcodes.tsv").write_text("".join(barcodes[:-1]))
    with pytest.raises(UnsupportedFormat, match=r"12 cells .*barcodes\.tsv has 11"):
        open_source(LOCAL, str(folder))


@pytest.mark.parametrize(
    ("new_entry", "message"),
    [
        ("201 1 -1\n", "negative count"),
        ("201 1 1.5\n", "non-integer count"),
        ("201 13 1\n", "out of range"),
        ("201 1 x\n", "cannot parse"),
    ],
)
def test_bad_mtx_entries(tmp_path, new_entry, message):
    folder = copy_mtx_folder(TENX / "v2_mtx", tmp_path / "sample")
    rewrite_matrix(folder, lambda entries: [new_entry, *entries[1:]])
    sample = open_one(folder)
    with pytest.raises(UnsupportedFormat, match=message):
        read_counts(sample)


def test_entry_count_differs_from_header(tmp_path):
    folder = copy_mtx_folder(TENX / "v2_mtx", tmp_path / "sample")
    rewrite_matrix(folder, lambda entries: entries[1:])
    with pytest.raises(UnsupportedFormat, match="declares 12 entries but the file holds 11"):
        read_counts(open_one(folder))


def test_missing_sources(tmp_path):
    with pytest.raises(SourceNotFound, match="does not exist"):
        open_source(LOCAL, str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceNotFound, match="no matrix"):
        open_source(LOCAL, str(tmp_path / "empty"))
    folder = copy_mtx_folder(TENX / "v2_mtx", tmp_path / "sample")
    (folder / "barcodes.tsv").unlink()
    with pytest.raises(SourceNotFound, match=r"barcodes\.tsv"):
        open_source(LOCAL, str(folder))


@pytest.mark.parametrize(
    ("path", "format", "message"),
    [
        ("v3_filtered_feature_bc_matrix.h5", "h5ad", "is 10x_h5, not h5ad"),
        ("v3_filtered_feature_bc_matrix.h5", "10x_mtx", "is 10x_h5, not 10x_mtx"),
        ("v3_mtx_gz", "10x_h5", "Cell Ranger matrix folder, not 10x_h5"),
        ("v3_mtx_gz", "loom", "unknown format"),
    ],
)
def test_wrong_format(path, format, message):
    with pytest.raises(UnsupportedFormat, match=message):
        open_source(LOCAL, str(TENX / path), format)


def test_unreadable_files(tmp_path):
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(UnsupportedFormat, match="not an HDF5 file"):
        open_source(LOCAL, str(tmp_path / "text.h5"))
    with h5py.File(tmp_path / "other.h5", "w") as file:
        file["values"] = np.arange(3)
    with pytest.raises(UnsupportedFormat, match="no recognisable layout"):
        open_source(LOCAL, str(tmp_path / "other.h5"))


def test_sources_on_s3(emulator):
    s3 = fsspec.filesystem(
        "s3",
        skip_instance_cache=True,
        **AwsSettings(endpoint_url=emulator.url, emulator_credentials=True).storage_options(),
    )
    s3.mkdir("sources-test-bucket")
    dataset = SyntheticDataset(300, 120, seed=5, rows_per_block=128)
    write_10x_mtx(s3, "sources-test-bucket/experiment/sample_b", dataset)
    write_h5ad(s3, "sources-test-bucket/experiment/sample_a/counts.h5ad", dataset)
    expected = sparse.vstack(list(dataset.row_blocks()), format="csr")

    samples = open_source(s3, "sources-test-bucket/experiment/")
    assert [sample.name for sample in samples] == ["sample_a", "sample_b"]
    for sample in samples:
        assert_same_counts(read_counts(sample), expected)
        np.testing.assert_array_equal(sample.barcodes, dataset.barcodes)
