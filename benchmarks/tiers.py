"""The benchmark tiers, their datasets (generated once as h5ad under benchmarks/data/), and the
queries both sides answer."""

import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem
from scipy import sparse

from worker.datasets.synthetic import SyntheticDataset, write_h5ad

DATA = Path(__file__).resolve().parent / "data"

# The experiment our side prepares, in the tier's store folder.
EXPERIMENT = "benchmark"
# The queries, the same on both sides.
LIST_GENES_FILTER = "CD"  # ListGenes' geneNamesFilter "%CD%": gene names containing CD
LIST_GENES_LIMIT = 50
ONE_GENE = "CD3D"
N_TOP_GENES = 2000


@dataclass(frozen=True)
class Tier:
    name: str
    dataset: SyntheticDataset
    # Runs of each light query (ListGenes, GeneExpression, GetEmbedding) and of each heavy one
    # (DifferentialExpression), after one warm-up run that is not counted.
    light_repeats: int
    heavy_repeats: int
    # Both sides compile numba's neighbour search before they are timed (ours on Dask workers
    # that warm up when they start, as deployed). Off for the smoke test, which times nothing
    # worth the minute it takes.
    numba_warm: bool = True

    @property
    def folder(self) -> Path:
        return DATA / self.name

    @property
    def source(self) -> Path:
        """The tier's h5ad, named by the parameters it was generated with."""
        d = self.dataset
        return self.folder / f"cells{d.n_cells}_genes{d.n_genes}_umis{d.counts_per_cell:g}.h5ad"

    @property
    def twenty_genes(self) -> list[str]:
        return self.dataset.gene_names[:20].tolist()

    @property
    def compared_cell_types(self) -> tuple[str, str]:
        """The two clusters DifferentialExpression compares: the dataset's first two cell types."""
        first, second = self.dataset.cluster_names[:2]
        return first, second


TIERS = {
    tier.name: tier
    for tier in (
        Tier("tiny", SyntheticDataset(n_cells=2_000, n_genes=2_000), 3, 2, numba_warm=False),
        Tier("small", SyntheticDataset(n_cells=10_000, n_genes=30_000), 20, 3),
        # Two heavy runs from medium on: scanpy's rank_genes_groups takes minutes at this size.
        Tier("medium", SyntheticDataset(n_cells=200_000, n_genes=30_000), 20, 2),
        Tier("large", SyntheticDataset(n_cells=1_000_000, n_genes=30_000), 20, 2),
    )
}


def ensure_source(tier: Tier) -> float | None:
    """Generate the tier's h5ad unless it is there; the seconds it took, or None if cached."""
    if tier.source.exists():
        return None
    started = time.perf_counter()
    # Written under another name first, so an interrupted generation is never taken as cached.
    partial = tier.source.with_suffix(".partial")
    write_h5ad(LocalFileSystem(), str(partial), _PooledDataset(**asdict(tier.dataset)))
    partial.rename(tier.source)
    return time.perf_counter() - started


@dataclass(frozen=True)
class _PooledDataset(SyntheticDataset):
    """The dataset with its row blocks drawn by a pool of processes, handed out in order."""

    def row_blocks(self) -> Iterator[sparse.csr_matrix]:
        processes = os.cpu_count() or 1
        plain = SyntheticDataset(**asdict(self))
        with ProcessPoolExecutor(processes, initializer=_keep, initargs=(plain,)) as pool:
            # A bounded window, so blocks never pile up faster than the writer compresses them.
            pending = deque()
            for block in range(self.n_blocks):
                pending.append(pool.submit(_row_block, block))
                if len(pending) >= 2 * processes:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


_dataset: SyntheticDataset | None = None


def _keep(dataset: SyntheticDataset) -> None:
    global _dataset
    _dataset = dataset


def _row_block(block: int) -> sparse.csr_matrix:
    return _dataset.row_block(block)
