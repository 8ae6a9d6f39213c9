"""The gene-major copy of the counts, built by a shuffle through scratch objects.

Row blocks of `X` are cut into pieces, one per segment of the CSC arrays; each segment is
then assembled from its pieces alone. Segments are whole shards of the CSC arrays, so each
assembler writes its shards without touching another's; a gene whose entries cross a
segment boundary is in the pieces of both segments.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import numba
import numpy as np
from numcodecs import Blosc

_CODEC = Blosc(cname="zstd", clevel=1, shuffle=Blosc.BITSHUFFLE)
# A piece's rows (local to its row block) and counts fit in 16 bits in most blocks: half the
# bytes to compress, write and read (a 5000-cell block of the medium tier: 11.5 instead of
# 13.8 MB, compressed in 89 instead of 277 ms).
_NARROW = np.uint16
_WIDE_ROWS, _WIDE_VALUES = np.int32, np.float32


@dataclass(frozen=True)
class Piece:
    """The entries of one row block in some consecutive genes, gene by gene, rows ascending."""

    n_rows: int
    gene_counts: np.ndarray  # entries of each gene
    rows: np.ndarray  # local to the row block
    values: np.ndarray

    @property
    def nnz(self) -> int:
        return len(self.rows)


def segment_gene_ranges(gene_indptr: np.ndarray, segment_elements: int) -> list[tuple[int, int]]:
    """For each segment `[k*S, (k+1)*S)` of the CSC arrays, the genes `[first, stop)` with
    entries in it."""
    total = int(gene_indptr[-1])
    ranges = []
    for start in range(0, max(total, 1), segment_elements):
        stop = min(start + segment_elements, total)
        first = int(np.searchsorted(gene_indptr, start, side="right")) - 1
        last = int(np.searchsorted(gene_indptr, stop, side="left"))
        ranges.append((max(first, 0), max(last, first + 1)))
    return ranges


def encode_piece(piece: Piece) -> bytes:
    """A piece as compressed bytes: 16-bit rows and values where they fit."""
    narrow_rows = piece.n_rows <= np.iinfo(_NARROW).max + 1
    narrow_values = piece.nnz == 0 or (
        piece.values.max() <= np.iinfo(_NARROW).max
        and np.array_equal(piece.values, np.floor(piece.values))
    )
    header = np.array(
        [piece.n_rows, len(piece.gene_counts), piece.nnz, narrow_rows, narrow_values],
        dtype=np.int64,
    )
    raw = b"".join(
        (
            header.tobytes(),
            piece.gene_counts.astype(np.int32).tobytes(),
            piece.rows.astype(_NARROW if narrow_rows else _WIDE_ROWS).tobytes(),
            piece.values.astype(_NARROW if narrow_values else _WIDE_VALUES).tobytes(),
        )
    )
    return _CODEC.encode(raw)


def decode_piece(encoded: bytes) -> Piece:
    raw = memoryview(_CODEC.decode(encoded))
    n_rows, n_genes, nnz, narrow_rows, narrow_values = (
        int(value) for value in np.frombuffer(raw[:40], dtype=np.int64)
    )
    offset = 40
    parts = []
    for dtype, length in (
        (np.int32, n_genes),
        (_NARROW if narrow_rows else _WIDE_ROWS, nnz),
        (_NARROW if narrow_values else _WIDE_VALUES, nnz),
    ):
        size = np.dtype(dtype).itemsize * length
        parts.append(np.frombuffer(raw[offset : offset + size], dtype=dtype))
        offset += size
    return Piece(n_rows, *parts)


def cut_row_block(
    indptr: np.ndarray,
    genes: np.ndarray,
    values: np.ndarray,
    n_genes: int,
    gene_ranges: list[tuple[int, int]],
) -> list[tuple[int, Piece]]:
    """The non-empty pieces of a CSR row block, one per segment: (segment index, piece)."""
    gene_indptr, rows, gene_values = _by_gene(indptr, genes, values, n_genes)
    n_rows = len(indptr) - 1
    pieces = []
    for segment, (first, stop) in enumerate(gene_ranges):
        start, end = gene_indptr[first], gene_indptr[stop]
        if end > start:
            counts = np.diff(gene_indptr[first : stop + 1])
            pieces.append((segment, Piece(n_rows, counts, rows[start:end], gene_values[start:end])))
    return pieces


def assemble_segment(
    pieces: Iterable[tuple[int, Piece]], gene_indptr: np.ndarray, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """CSC data and indices at positions `[start, stop)` of the gene-major arrays.

    `gene_indptr` is the CSC indptr (absolute positions) of the genes the pieces span;
    `pieces` are `(first row, piece)` of the row blocks holding their entries, in row order.
    Each gene's entries of a piece go straight to their place, after the gene's entries in
    earlier row blocks, so entries come out ordered by gene, then by cell, with no sort and
    nothing held but the output and one piece.
    """
    data = np.zeros(stop - start, np.float32)
    indices = np.zeros(stop - start, np.int32)
    next_free = gene_indptr[:-1].astype(np.int64)
    for first_row, piece in pieces:
        _place(
            piece.gene_counts, piece.rows, piece.values, first_row, next_free, start, data, indices
        )
    return data, indices


@numba.njit(cache=True, nogil=True)
def _by_gene(indptr, genes, values, n_genes):
    """A CSR block's entries ordered by gene, then row (a counting sort): the CSC indptr,
    rows and values."""
    gene_indptr = np.zeros(n_genes + 1, dtype=np.int64)
    for entry in range(len(genes)):
        gene_indptr[genes[entry] + 1] += 1
    for gene in range(n_genes):
        gene_indptr[gene + 1] += gene_indptr[gene]
    next_free = gene_indptr[:-1].copy()
    rows = np.empty(len(genes), dtype=np.int32)
    gene_values = np.empty(len(genes), dtype=np.float32)
    for row in range(len(indptr) - 1):
        for entry in range(indptr[row], indptr[row + 1]):
            position = next_free[genes[entry]]
            rows[position] = row
            gene_values[position] = values[entry]
            next_free[genes[entry]] += 1
    return gene_indptr, rows, gene_values


@numba.njit(cache=True, nogil=True)
def _place(gene_counts, rows, values, first_row, next_free, start, data, indices):
    """Each gene's entries of a piece at the gene's next free positions that fall in
    `[start, start + len(data))`."""
    entry = 0
    for gene in range(len(gene_counts)):
        position = next_free[gene]
        for _ in range(gene_counts[gene]):
            if start <= position < start + len(data):
                data[position - start] = values[entry]
                indices[position - start] = rows[entry] + first_row
            position += 1
            entry += 1
        next_free[gene] = position
