"""The gene-major copy of the counts, built by a shuffle through scratch objects.

Row blocks of `X` are cut into pieces, one per segment of the CSC arrays; each segment is
then assembled from its pieces alone. Segments are whole shards of the CSC arrays, so each
assembler writes its shards without touching another's; a gene whose entries cross a
segment boundary is in the pieces of both segments.
"""

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
    pieces: list[tuple[int, sp.csc_matrix]], n_genes: int
) -> tuple[np.ndarray, np.ndarray]:
    """CSC data and indices of a segment's genes from its pieces `(first row, piece)`.

    Entries come out ordered by gene, then by cell.
    """
    if not pieces:
        return np.zeros(0, np.float32), np.zeros(0, np.int32)
    genes = np.concatenate([np.repeat(np.arange(n_genes), np.diff(p.indptr)) for _, p in pieces])
    cells = np.concatenate([p.indices.astype(np.int64) + first for first, p in pieces])
    data = np.concatenate([p.data for _, p in pieces])
    # Pieces arrive in row-block order, so a stable sort by gene keeps cells ascending.
    order = np.argsort(genes, kind="stable")
    return data[order], cells[order].astype(np.int32)
