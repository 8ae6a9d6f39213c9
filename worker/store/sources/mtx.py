"""Reader of Cell Ranger matrix folders: MatrixMarket genes x cells plus barcodes and features."""

import csv
import gzip
import zlib
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import BinaryIO

import fsspec
import numpy as np
import pandas as pd

from worker.errors import SourceNotFound, UnsupportedFormat
from worker.store.sources.blocks import Entries, row_blocks_from_entries
from worker.store.sources.sample import SourceSample

MATRIX_FILES = ("matrix.mtx", "matrix.mtx.gz")
FEATURE_FILES = ("features.tsv", "features.tsv.gz", "genes.tsv", "genes.tsv.gz")
BARCODE_FILES = ("barcodes.tsv", "barcodes.tsv.gz")

ENTRIES_PER_CHUNK = 1 << 20
_STREAM_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


@dataclass(frozen=True)
class _Header:
    field: str  # "integer" or "real"
    n_genes: int
    n_cells: int
    n_entries: int


def open_mtx(fs: fsspec.AbstractFileSystem, files: dict[str, str], name: str) -> SourceSample:
    """The sample of a matrix folder, given its files by name (at least one of MATRIX_FILES)."""
    matrix_path = files[next(file for file in MATRIX_FILES if file in files)]
    barcodes_path = _find(files, BARCODE_FILES, matrix_path)
    features_path = _find(files, FEATURE_FILES, matrix_path)
    with _open_stream(fs, matrix_path) as stream:
        header = _read_header(stream, matrix_path)
    barcodes = _read_tsv(fs, barcodes_path)[0]
    features = _read_tsv(fs, features_path)
    if len(barcodes) != header.n_cells or len(features) != header.n_genes:
        raise UnsupportedFormat(
            f"{matrix_path} header says {header.n_genes} genes x {header.n_cells} cells but "
            f"{features_path} has {len(features)} lines and {barcodes_path} has {len(barcodes)}"
        )
    gene_ids = features[0]
    gene_names = features.get(1, gene_ids)
    if 2 in features:
        keep = (features[2] == "Gene Expression").to_numpy()
    else:
        keep = np.ones(len(features), dtype=bool)
    # Maps a source gene index to its index among the kept genes, or -1.
    kept_index = np.full(len(features), -1, dtype=np.int64)
    kept_index[keep] = np.arange(keep.sum())
    n_genes = int(keep.sum())

    return SourceSample(
        name=name,
        n_cells=header.n_cells,
        n_genes=n_genes,
        barcodes=barcodes.to_numpy(dtype=str),
        gene_ids=gene_ids[keep].to_numpy(dtype=str),
        gene_names=gene_names[keep].to_numpy(dtype=str),
        read_blocks=partial(_row_blocks, fs, matrix_path, header, kept_index, n_genes),
    )


def _row_blocks(fs, path: str, header: _Header, kept_index, n_genes: int, rows_per_block: int):
    read_entries = partial(_read_entries, fs, path, header, kept_index)
    return row_blocks_from_entries(read_entries, header.n_cells, n_genes, rows_per_block)


def _find(files: dict[str, str], candidates: tuple[str, ...], matrix_path: str) -> str:
    for file in candidates:
        if file in files:
            return files[file]
    raise SourceNotFound(f"{' or '.join(candidates)} missing beside {matrix_path}")


@contextmanager
def _open_stream(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[BinaryIO]:
    """The file's bytes, decompressed if it is gzipped (whatever its name says)."""
    with fs.open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        if gzipped:
            with gzip.GzipFile(fileobj=raw) as stream:
                yield stream
        else:
            yield raw


def _read_header(stream: BinaryIO, path: str) -> _Header:
    banner = stream.readline().decode("ascii", "replace")
    words = banner.lower().split()
    if words[:3] != ["%%matrixmarket", "matrix", "coordinate"] or words[3:] not in (
        ["integer", "general"],
        ["real", "general"],
    ):
        raise UnsupportedFormat(
            f"{path} is not a general coordinate MatrixMarket matrix of integer or real values "
            f"(header {banner.strip()!r})"
        )
    line = stream.readline()
    while line.startswith(b"%") or not line.strip():
        if not line:
            raise UnsupportedFormat(f"{path} has no size line")
        line = stream.readline()
    try:
        n_genes, n_cells, n_entries = (int(word) for word in line.split())
    except ValueError:
        raise UnsupportedFormat(f"{path}: bad size line {line.strip()!r}") from None
    return _Header(words[3], n_genes, n_cells, n_entries)


def _read_tsv(fs: fsspec.AbstractFileSystem, path: str) -> pd.DataFrame:
    try:
        with _open_stream(fs, path) as stream:
            return pd.read_csv(
                stream, sep="\t", header=None, dtype=str, quoting=csv.QUOTE_NONE, na_filter=False
            )
    except pd.errors.EmptyDataError:
        raise UnsupportedFormat(f"{path} is empty") from None
    except (ValueError, *_STREAM_ERRORS) as exc:
        raise UnsupportedFormat(f"{path} is not a readable tab-separated file: {exc}") from exc


def _read_entries(
    fs: fsspec.AbstractFileSystem, path: str, header: _Header, kept_index: np.ndarray
) -> Generator[Entries]:
    """The matrix's entries in file order, as (cell, kept gene, count) chunks, each checked."""
    n_read = 0
    with _open_stream(fs, path) as stream:
        _read_header(stream, path)
        if header.n_entries == 0:
            return
        try:
            chunks = pd.read_csv(
                stream,
                sep=r"\s+",
                header=None,
                names=["gene", "cell", "count"],
                dtype={"gene": np.int64, "cell": np.int64, "count": np.float64},
                chunksize=ENTRIES_PER_CHUNK,
            )
            for chunk in chunks:
                genes = chunk["gene"].to_numpy() - 1
                cells = chunk["cell"].to_numpy() - 1
                counts = chunk["count"].to_numpy()
                _check_entries(genes, cells, counts, header, path, n_read)
                n_read += len(chunk)
                kept_genes = kept_index[genes]
                kept = kept_genes >= 0
                yield cells[kept], kept_genes[kept], counts[kept].astype(np.float32)
        except (ValueError, *_STREAM_ERRORS) as exc:
            raise UnsupportedFormat(f"{path}: cannot parse entries after {n_read}: {exc}") from exc
    if n_read != header.n_entries:
        raise UnsupportedFormat(
            f"{path} header declares {header.n_entries} entries but the file holds {n_read}"
        )


def _check_entries(genes, cells, counts, header: _Header, path: str, n_before: int) -> None:
    def fail(bad: np.ndarray, what: str):
        first = np.flatnonzero(bad)[0]
        raise UnsupportedFormat(
            f"{path}: entry {n_before + first + 1} (gene {genes[first] + 1}, cell "
            f"{cells[first] + 1}, count {counts[first]}): {what}"
        )

    out_of_range = (genes < 0) | (genes >= header.n_genes) | (cells < 0) | (cells >= header.n_cells)
    if out_of_range.any():
        fail(out_of_range, f"out of range for {header.n_genes} genes x {header.n_cells} cells")
    if not np.isfinite(counts).all():
        fail(~np.isfinite(counts), "missing or non-finite count")
    if (counts < 0).any():
        fail(counts < 0, "negative count")
    if header.field == "integer" and (counts != np.round(counts)).any():
        fail(counts != np.round(counts), "non-integer count in a matrix declared 'integer'")
