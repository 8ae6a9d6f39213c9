"""The gene-major copy of the counts, built by a shuffle through scratch objects.

Row blocks of `X` are cut into pieces, one per segment of the CSC arrays; each segment is
then assembled from its pieces alone. Segments are whole shards of the CSC arrays, so each
assembler writes its shards without touching another's; a gene whose entries cross a
segment boundary is in the pieces of both segments.
"""

from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp
from numcodecs import Blosc

_CODEC = Blosc(cname="zstd", clevel=1, shuffle=Blosc.BITSHUFFLE)


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


def encode_piece(piece: sp.csc_matrix) -> bytes:
    """A CSC piece (cells of one row block x genes of one segment) as compressed bytes."""
    header = np.array([piece.shape[0], piece.shape[1], piece.nnz], dtype=np.int64)
    raw = b"".join(
        (
            header.tobytes(),
            piece.indptr.astype(np.int64).tobytes(),
            piece.indices.astype(np.int32).tobytes(),
            piece.data.astype(np.float32).tobytes(),
        )
    )
    return _CODEC.encode(raw)


def decode_piece(encoded: bytes) -> sp.csc_matrix:
    raw = memoryview(_CODEC.decode(encoded))
    n_rows, n_cols, nnz = np.frombuffer(raw[:24], dtype=np.int64)
    offset = 24
    indptr = np.frombuffer(raw[offset : offset + 8 * (n_cols + 1)], dtype=np.int64)
    offset += 8 * (n_cols + 1)
    indices = np.frombuffer(raw[offset : offset + 4 * nnz], dtype=np.int32)
    offset += 4 * nnz
    data = np.frombuffer(raw[offset : offset + 4 * nnz], dtype=np.float32)
    return sp.csc_matrix((data, indices, indptr), shape=(int(n_rows), int(n_cols)))


def cut_row_block(
    block: sp.csr_matrix, gene_ranges: list[tuple[int, int]]
) -> list[tuple[int, sp.csc_matrix]]:
    """The non-empty pieces of a row block, one per segment: (segment index, CSC piece)."""
    by_gene = block.tocsc()
    by_gene.sort_indices()
    pieces = []
    for segment, (first, stop) in enumerate(gene_ranges):
        piece = by_gene[:, first:stop]
        if piece.nnz:
            pieces.append((segment, piece))
    return pieces


def assemble_segment(
    pieces: Iterable[tuple[int, sp.csc_matrix]], gene_indptr: np.ndarray, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """CSC data and indices at positions `[start, stop)` of the gene-major arrays.

    `gene_indptr` is the CSC indptr (absolute positions) of the genes the pieces span;
    `pieces` are `(first row, CSC piece)` of the row blocks holding their entries, in row
    order. Each entry goes straight to its place, after its gene's entries in earlier row
    blocks, so entries come out ordered by gene, then by cell, with no sort and nothing held
    but the output and one piece.
    """
    data = np.zeros(stop - start, np.float32)
    indices = np.zeros(stop - start, np.int32)
    next_free = gene_indptr[:-1].astype(np.int64)
    for first_row, piece in pieces:
        counts = np.diff(piece.indptr)
        positions = np.repeat(next_free - piece.indptr[:-1], counts) + np.arange(piece.nnz)
        next_free += counts
        kept = (positions >= start) & (positions < stop)
        data[positions[kept] - start] = piece.data[kept]
        indices[positions[kept] - start] = piece.indices[kept] + first_row
    return data, indices
