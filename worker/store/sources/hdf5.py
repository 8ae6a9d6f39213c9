"""Readers of HDF5 sources: Cell Ranger `.h5` (v2 and v3) and AnnData `.h5ad`."""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import anndata
import fsspec
import h5py
import numpy as np
from scipy import sparse

from worker.errors import UnsupportedFormat
from worker.store.sources.blocks import (
    Entries,
    bucket_row_blocks,
    canonical_csr,
    check_counts,
    checked_entries,
    checked_indptr,
    csr_row_blocks,
)
from worker.store.sources.sample import SourceSample

NONZEROS_PER_CHUNK = 1 << 22
DENSE_VALUES_PER_READ = 1 << 24
_CSR_DATASETS = ("data", "indices", "indptr")


@contextmanager
def open_hdf5(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[h5py.File]:
    """The file opened by h5py through fsspec, so that only the slices read are fetched."""
    with fs.open(path, "rb") as raw:
        try:
            file = h5py.File(raw, "r")
        except OSError as exc:
            raise UnsupportedFormat(f"{path} is not an HDF5 file") from exc
        with file:
            yield file


def hdf5_format(file: h5py.File, path: str) -> str:
    """`h5ad` or `10x_h5`, from the file's layout."""
    if "X" in file or file.attrs.get("encoding-type") == "anndata":
        return "h5ad"
    if "matrix" in file or _v2_genome_groups(file):
        return "10x_h5"
    raise UnsupportedFormat(
        f"{path}: HDF5 file with no recognisable layout (neither a Cell Ranger matrix nor AnnData)"
    )


def open_10x_h5(
    fs: fsspec.AbstractFileSystem, path: str, file: h5py.File, name: str
) -> SourceSample:
    if "matrix" in file:
        group = file["matrix"]
        _require(group, (*_CSR_DATASETS, "shape", "barcodes", "features"), path)
        features = group["features"]
        _require(features, ("id", "name", "feature_type"), path)
        # Probe-based (Flex) matrices give the gene of each probe in `gene_id`.
        feature_ids = _strings(features["gene_id" if "gene_id" in features else "id"])
        feature_names = _strings(features["name"])
        keep = _strings(features["feature_type"]) == "Gene Expression"
    else:
        genomes = _v2_genome_groups(file)
        if len(genomes) != 1:
            raise UnsupportedFormat(f"{path}: Cell Ranger v2 h5 with genomes {genomes}; one needed")
        group = file[genomes[0]]
        _require(group, (*_CSR_DATASETS, "shape", "barcodes", "genes", "gene_names"), path)
        feature_ids = _strings(group["genes"])
        feature_names = _strings(group["gene_names"])
        keep = np.ones(len(feature_ids), dtype=bool)
    n_features, n_cells = (int(size) for size in group["shape"][:])
    barcodes = _strings(group["barcodes"])
    if len(barcodes) != n_cells or len(feature_ids) != n_features:
        raise UnsupportedFormat(
            f"{path}: shape says {n_features} features x {n_cells} cells but there are "
            f"{len(feature_ids)} features and {len(barcodes)} barcodes"
        )
    keep_cols = None if keep.all() else np.flatnonzero(keep)
    return SourceSample(
        name=name,
        n_cells=n_cells,
        n_genes=int(keep.sum()),
        barcodes=barcodes,
        gene_ids=feature_ids[keep],
        gene_names=feature_names[keep],
        read_blocks=partial(_10x_blocks, fs, path, group.name, n_cells, n_features, keep_cols),
        # Cell Ranger stores genes x cells as CSC, which is cells x genes as CSR.
        open_entries=None
        if keep_cols is not None
        else partial(_open_entries, fs, path, group.name, n_cells, n_features, path),
    )


def open_h5ad(fs: fsspec.AbstractFileSystem, path: str, file: h5py.File, name: str) -> SourceSample:
    # The counts live where scanpy workflows leave them; var of raw.X is raw/var.
    if "layers" in file and "counts" in file["layers"]:
        matrix_key, var_key = "layers/counts", "var"
    elif "raw" in file and "X" in file["raw"]:
        matrix_key, var_key = "raw/X", "raw/var"
    elif "X" in file:
        matrix_key, var_key = "X", "var"
    else:
        raise UnsupportedFormat(f"{path}: AnnData file without X")
    _require(file, ("obs", var_key), path)
    barcodes = _dataframe_index(file["obs"], path)
    var = file[var_key]
    index = _dataframe_index(var, path)
    gene_ids = _dataframe_column(var, ("gene_ids", "gene_id"))
    gene_names = _dataframe_column(var, ("gene_names", "gene_symbols", "feature_name"))
    if gene_ids is None:
        gene_ids = index
    if gene_names is None:
        gene_names = index
    layout, shape = _matrix_layout(file[matrix_key], f"{path}:{matrix_key}")
    if shape != (len(barcodes), len(gene_ids)):
        raise UnsupportedFormat(
            f"{path}: {matrix_key} has shape {shape} but there are {len(barcodes)} cells and "
            f"{len(gene_ids)} genes"
        )
    return SourceSample(
        name=name,
        n_cells=shape[0],
        n_genes=shape[1],
        barcodes=barcodes,
        gene_ids=gene_ids,
        gene_names=gene_names,
        read_blocks=partial(_h5ad_blocks, fs, path, matrix_key, layout, shape),
        open_entries=partial(_open_entries, fs, path, matrix_key, *shape, f"{path}:{matrix_key}")
        if layout == "csr"
        else None,
    )


class _Hdf5Entries:
    def __init__(self, group: h5py.Group, n_rows: int, n_cols: int, source: str):
        self._group = group
        self._n_cols = n_cols
        self._source = source
        self.indptr = checked_indptr(group, n_rows, source)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return checked_entries(self._group, start, stop, self._n_cols, self._source)


@contextmanager
def _open_entries(fs, path, group_name, n_rows, n_cols, source) -> Iterator[_Hdf5Entries]:
    with open_hdf5(fs, path) as file:
        yield _Hdf5Entries(file[group_name], n_rows, n_cols, source)


def _10x_blocks(fs, path, group_name, n_cells, n_features, keep_cols, rows_per_block):
    # Cell Ranger stores genes x cells as CSC, which is cells x genes as CSR.
    with open_hdf5(fs, path) as file:
        yield from csr_row_blocks(
            file[group_name], n_cells, n_features, rows_per_block, path, keep_cols
        )


def _h5ad_blocks(fs, path, matrix_key, layout, shape, rows_per_block):
    n_rows, n_cols = shape
    source = f"{path}:{matrix_key}"
    with open_hdf5(fs, path) as file:
        matrix = file[matrix_key]
        if layout == "csr":
            yield from csr_row_blocks(matrix, n_rows, n_cols, rows_per_block, source)
        elif layout == "csc":
            entries = _csc_entries(matrix, n_rows, n_cols, source)
            yield from bucket_row_blocks(entries, n_rows, n_cols, rows_per_block)
        else:
            yield from _dense_row_blocks(matrix, n_rows, n_cols, rows_per_block, source)


def _dense_row_blocks(matrix: h5py.Dataset, n_rows, n_cols, rows_per_block, source):
    # A dense block of a wide matrix can be large: read it in slices and keep them sparse.
    rows_per_read = max(1, DENSE_VALUES_PER_READ // max(n_cols, 1))
    for start in range(0, n_rows, rows_per_block):
        stop = min(start + rows_per_block, n_rows)
        parts = []
        for first in range(start, stop, rows_per_read):
            values = matrix[first : min(first + rows_per_read, stop)]
            check_counts(values, source)
            parts.append(sparse.csr_matrix(values))
        yield canonical_csr(sparse.vstack(parts, format="csr"))


def _csc_entries(matrix: h5py.Group, n_rows: int, n_cols: int, source: str) -> Iterator[Entries]:
    """The entries of a stored CSC, a run of whole columns of about NONZEROS_PER_CHUNK at a time."""
    indptr = matrix["indptr"][:].astype(np.int64)
    if len(indptr) != n_cols + 1 or np.any(np.diff(indptr) < 0):
        raise UnsupportedFormat(f"{source}: indptr does not fit a CSC of {n_cols} columns")
    first_col = 0
    while first_col < n_cols:
        stop_col = int(np.searchsorted(indptr, indptr[first_col] + NONZEROS_PER_CHUNK, "right"))
        stop_col = min(max(stop_col - 1, first_col + 1), n_cols)
        first, last = indptr[first_col], indptr[stop_col]
        values = matrix["data"][first:last]
        rows = matrix["indices"][first:last].astype(np.int64)
        check_counts(values, source)
        if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
            raise UnsupportedFormat(f"{source}: row indices out of range for {n_rows} rows")
        cols = np.repeat(np.arange(first_col, stop_col), np.diff(indptr[first_col : stop_col + 1]))
        yield rows, cols, values.astype(np.float32)
        first_col = stop_col


def _matrix_layout(node: h5py.Group | h5py.Dataset, source: str) -> tuple[str, tuple[int, int]]:
    if isinstance(node, h5py.Dataset):
        if node.ndim != 2:
            raise UnsupportedFormat(f"{source} is not a matrix (shape {node.shape})")
        return "dense", node.shape
    encoding = node.attrs.get("encoding-type")
    if encoding not in ("csr_matrix", "csc_matrix"):
        raise UnsupportedFormat(f"{source} has unsupported encoding {encoding!r}")
    _require(node, _CSR_DATASETS, source)
    n_rows, n_cols = (int(size) for size in node.attrs["shape"])
    return encoding[:3], (n_rows, n_cols)


def _dataframe_index(group: h5py.Group, path: str) -> np.ndarray:
    if "_index" not in group.attrs:
        raise UnsupportedFormat(f"{path}: {group.name} is not an AnnData dataframe (old h5ad?)")
    return _as_strings(anndata.io.read_elem(group[group.attrs["_index"]]))


def _dataframe_column(group: h5py.Group, names: tuple[str, ...]) -> np.ndarray | None:
    for name in names:
        if name in group:
            return _as_strings(anndata.io.read_elem(group[name]))
    return None


def _as_strings(values) -> np.ndarray:
    return np.asarray(values).astype(str)


def _strings(dataset: h5py.Dataset) -> np.ndarray:
    return np.asarray(dataset.asstr()[:], dtype=str)


def _v2_genome_groups(file: h5py.File) -> list[str]:
    return [key for key, node in file.items() if isinstance(node, h5py.Group) and "indptr" in node]


def _require(group: h5py.Group, names: tuple[str, ...], source: str) -> None:
    missing = [name for name in names if name not in group]
    if missing:
        raise UnsupportedFormat(f"{source}: {group.name} lacks {', '.join(missing)}")
