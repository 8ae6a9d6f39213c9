"""Assembly of canonical CSR row blocks from streamed entries or from slices of stored CSR."""

import math
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import h5py
import numpy as np
from scipy import sparse

from worker.errors import UnsupportedFormat

# (rows, cols, values) of some nonzero entries: rows and cols 0-based int64, values float32.
Entries = tuple[np.ndarray, np.ndarray, np.ndarray]

# A bucket record: the row is local to its block, so int32 always fits.
_RECORD = np.dtype([("row", "<i4"), ("col", "<i4"), ("value", "<f4")])


def canonical_csr(matrix) -> sparse.csr_matrix:
    """float32 CSR with indices sorted within each row, duplicates summed, no explicit zeros."""
    block = sparse.csr_matrix(matrix, dtype=np.float32)
    block.sum_duplicates()
    block.eliminate_zeros()
    return block


def check_counts(values: np.ndarray, source: str) -> None:
    """Raise UnsupportedFormat unless all values are non-negative integers."""
    values = np.ravel(values)
    if values.size == 0:
        return
    bad = values < 0
    if values.dtype.kind == "f":
        bad |= values != np.round(values)
    if bad.any():
        example = values[np.flatnonzero(bad)[0]]
        raise UnsupportedFormat(
            f"{source} holds negative or non-integer values (e.g. {example}): the matrix looks "
            "normalised, raw counts are needed"
        )


def row_blocks_from_entries(
    read_entries: Callable[[], Generator[Entries]],
    n_rows: int,
    n_cols: int,
    rows_per_block: int,
) -> Iterator[sparse.csr_matrix]:
    """Row blocks from a source of entries that can be read more than once.

    Blocks can only be emitted as the entries stream if no entry of an emitted block comes
    later, which is known only after a full pass: a first pass checks that.
    """
    if _in_row_block_order(read_entries(), rows_per_block):
        yield from _blocks_from_ordered(read_entries(), n_rows, n_cols, rows_per_block)
    else:
        yield from bucket_row_blocks(read_entries(), n_rows, n_cols, rows_per_block)


def bucket_row_blocks(
    entries: Iterator[Entries], n_rows: int, n_cols: int, rows_per_block: int
) -> Iterator[sparse.csr_matrix]:
    """Row blocks from entries in any order, spilled to one temporary file per row block."""
    n_blocks = math.ceil(n_rows / rows_per_block)
    with tempfile.TemporaryDirectory(prefix="worker-row-blocks-") as directory:
        buckets = [Path(directory) / f"{block}.bin" for block in range(n_blocks)]
        for rows, cols, values in entries:
            block_of_entry = rows // rows_per_block
            order = np.argsort(block_of_entry, kind="stable")
            records = np.empty(len(order), dtype=_RECORD)
            records["row"] = rows[order] - block_of_entry[order] * rows_per_block
            records["col"] = cols[order]
            records["value"] = values[order]
            blocks, starts = np.unique(block_of_entry[order], return_index=True)
            stops = np.append(starts[1:], len(order))
            for block, start, stop in zip(blocks, starts, stops, strict=True):
                with buckets[block].open("ab") as bucket:
                    records[start:stop].tofile(bucket)
        for block, bucket in enumerate(buckets):
            if bucket.exists():
                records = np.fromfile(bucket, dtype=_RECORD)
                bucket.unlink()
            else:
                records = np.empty(0, dtype=_RECORD)
            yield _block(
                records["row"],
                records["col"],
                records["value"],
                _height(block, n_rows, rows_per_block),
                n_cols,
            )


def csr_row_blocks(
    group: h5py.Group,
    n_rows: int,
    n_cols: int,
    rows_per_block: int,
    source: str,
    keep_cols: np.ndarray | None = None,
) -> Iterator[sparse.csr_matrix]:
    """Row blocks of a CSR stored as `data`, `indices`, `indptr`, reading one block's slices.

    `keep_cols`, if given, selects (and renumbers) the columns to keep.
    """
    indptr = checked_indptr(group, n_rows, source)
    for start in range(0, n_rows, rows_per_block):
        stop = min(start + rows_per_block, n_rows)
        first, last = indptr[start], indptr[stop]
        values, indices = checked_entries(group, first, last, n_cols, source)
        block = sparse.csr_matrix(
            (values, indices, indptr[start : stop + 1] - first), shape=(stop - start, n_cols)
        )
        yield canonical_csr(block if keep_cols is None else block[:, keep_cols])


def checked_indptr(group: h5py.Group, n_rows: int, source: str) -> np.ndarray:
    """The `indptr` of a CSR stored as `data`, `indices`, `indptr`, as int64, checked."""
    indptr = group["indptr"][:].astype(np.int64)
    n_stored = group["data"].shape[0]
    if len(indptr) != n_rows + 1 or indptr[0] != 0 or indptr[-1] > n_stored:
        raise UnsupportedFormat(f"{source}: indptr does not fit a matrix of {n_rows} rows")
    if np.any(np.diff(indptr) < 0):
        raise UnsupportedFormat(f"{source}: indptr is not non-decreasing")
    return indptr


def checked_entries(
    group: h5py.Group, start: int, stop: int, n_cols: int, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """Values and column indices of the stored entries `[start, stop)`, as read, checked:
    non-negative integer counts, indices within the columns."""
    values = group["data"][start:stop]
    indices = group["indices"][start:stop]
    check_counts(values, source)
    if indices.size and (indices.min() < 0 or indices.max() >= n_cols):
        raise UnsupportedFormat(f"{source}: column indices out of range for {n_cols} columns")
    return values, indices


def _in_row_block_order(entries: Generator[Entries], rows_per_block: int) -> bool:
    last_block = 0
    for rows, _, _ in entries:
        if rows.size == 0:
            continue
        block_of_entry = rows // rows_per_block
        if block_of_entry[0] < last_block or np.any(np.diff(block_of_entry) < 0):
            entries.close()
            return False
        last_block = block_of_entry[-1]
    return True


def _blocks_from_ordered(
    entries: Iterator[Entries], n_rows: int, n_cols: int, rows_per_block: int
) -> Iterator[sparse.csr_matrix]:
    """Row blocks from entries whose row block never decreases, each emitted once complete."""
    pieces: list[Entries] = []  # of the block not yet emitted
    block = 0
    for chunk in entries:
        block_of_entry = chunk[0] // rows_per_block
        while block_of_entry.size and block_of_entry[-1] > block:
            stop = np.searchsorted(block_of_entry, block, side="right")
            pieces.append(tuple(part[:stop] for part in chunk))
            yield _block_of_pieces(pieces, block, n_rows, n_cols, rows_per_block)
            pieces = []
            chunk = tuple(part[stop:] for part in chunk)
            block_of_entry = block_of_entry[stop:]
            block += 1
        pieces.append(chunk)
    # The last block holding entries, then blocks of cells without any.
    for remaining in range(block, math.ceil(n_rows / rows_per_block)):
        yield _block_of_pieces(pieces, remaining, n_rows, n_cols, rows_per_block)
        pieces = []


def _block_of_pieces(pieces: list[Entries], block, n_rows, n_cols, rows_per_block):
    if pieces:
        rows, cols, values = (np.concatenate(parts) for parts in zip(*pieces, strict=True))
    else:
        rows, cols, values = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return _block(
        rows - block * rows_per_block, cols, values, _height(block, n_rows, rows_per_block), n_cols
    )


def _height(block: int, n_rows: int, rows_per_block: int) -> int:
    return min(rows_per_block, n_rows - block * rows_per_block)


def _block(local_rows, cols, values, n_block_rows: int, n_cols: int) -> sparse.csr_matrix:
    return canonical_csr(
        sparse.coo_matrix((values, (local_rows, cols)), shape=(n_block_rows, n_cols))
    )
