"""The sample a source reader returns: its names up front, its counts streamed in row blocks
(and, where the source stores them as CSR, read at any range of entries)."""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy import sparse


class StoredEntries(Protocol):
    """A sample's counts stored as a CSR of cells x genes, open for reading at any range."""

    # int64, checked: starts at 0, never decreases, within the stored entries.
    indptr: np.ndarray

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Counts and gene indices of the stored entries `[start, stop)`, in their stored
        dtypes, checked: non-negative integer counts, indices within the genes. Whether each
        cell's entries are canonical (sorted, unique, nonzero) is the reader's to check."""


@dataclass(frozen=True)
class SourceSample:
    """One sample of a source count matrix.

    `barcodes` are the source's (not yet prefixed by the sample name); `gene_names` are as in the
    source, not made unique. The counts are read only by `row_blocks`, which opens the source
    afresh on each call, or, if the source stores them as CSR with every gene kept, by
    `open_entries` (None otherwise), which a build reads from several tasks at once.
    """

    name: str
    n_cells: int
    n_genes: int
    barcodes: np.ndarray
    gene_ids: np.ndarray
    gene_names: np.ndarray
    read_blocks: Callable[[int], Iterator[sparse.csr_matrix]] = field(repr=False, compare=False)
    open_entries: Callable[[], AbstractContextManager[StoredEntries]] | None = field(
        default=None, repr=False, compare=False
    )

    def row_blocks(self, rows_per_block: int) -> Iterator[sparse.csr_matrix]:
        """Consecutive blocks of cells in source order: canonical float32 CSR, cells x genes.

        Every block has `rows_per_block` rows except the last. Content errors (negative or
        normalised counts, indices out of range) raise `UnsupportedFormat` while streaming.
        """
        if rows_per_block < 1:
            raise ValueError(f"rows_per_block must be positive, not {rows_per_block}")
        return self.read_blocks(rows_per_block)
