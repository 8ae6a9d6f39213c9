"""The sample a source reader returns: its names up front, its counts streamed in row blocks."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse


@dataclass(frozen=True)
class SourceSample:
    """One sample of a source count matrix.

    `barcodes` are the source's (not yet prefixed by the sample name); `gene_names` are as in the
    source, not made unique. The counts are read only by `row_blocks`, which opens the source
    afresh on each call.
    """

    name: str
    n_cells: int
    n_genes: int
    barcodes: np.ndarray
    gene_ids: np.ndarray
    gene_names: np.ndarray
    read_blocks: Callable[[int], Iterator[sparse.csr_matrix]] = field(repr=False, compare=False)

    def row_blocks(self, rows_per_block: int) -> Iterator[sparse.csr_matrix]:
        """Consecutive blocks of cells in source order: canonical float32 CSR, cells x genes.

        Every block has `rows_per_block` rows except the last. Content errors (negative or
        normalised counts, indices out of range) raise `UnsupportedFormat` while streaming.
        """
        if rows_per_block < 1:
            raise ValueError(f"rows_per_block must be positive, not {rows_per_block}")
        return self.read_blocks(rows_per_block)
