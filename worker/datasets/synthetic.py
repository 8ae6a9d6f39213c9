"""A deterministic PBMC-like count matrix generator, and writers of it in every source format.

Counts are negative binomial (gamma-Poisson): each cell draws its library size, a gamma factor
per gene module, then its UMIs among genes. Clusters carry real PBMC marker genes plus a
programme of other genes, strong enough for Louvain on scanpy's standard pipeline to find them.
Every row block is drawn from its own seed, so any block can be regenerated alone, and the
writers stream block by block.
"""

import gzip
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path

import anndata
import fsspec
import h5py
import numpy as np
import pandas as pd
from fsspec.implementations.local import LocalFileSystem
from scipy import sparse

from worker.store.sources.blocks import canonical_csr
from worker.store.sources.sample import SourceSample

MARKERS_BY_CELL_TYPE = {
    "CD4 naive T": ("CD3D", "CD3E", "IL7R", "CCR7", "LEF1", "TCF7"),
    "CD4 memory T": ("CD3D", "CD3E", "IL7R", "S100A4", "CD2", "AQP3"),
    "CD8 T": ("CD3D", "CD3E", "CD8A", "CD8B", "GZMK", "CCL5"),
    "NK": ("NKG7", "GNLY", "GZMB", "PRF1", "KLRD1", "GZMA"),
    "B": ("MS4A1", "CD79A", "CD79B", "CD19", "CD74", "HLA-DRA"),
    "CD14 monocyte": ("CD14", "LYZ", "S100A8", "S100A9", "CST3", "FCN1"),
    "FCGR3A monocyte": ("FCGR3A", "MS4A7", "CST3", "LST1", "AIF1", "IFITM3"),
    "dendritic": ("FCER1A", "CST3", "CLEC10A", "CD1C", "HLA-DQA1", "HLA-DRA"),
    "platelet": ("PPBP", "PF4", "GNG11", "SPARC", "TUBB1", "CLU"),
}
CELL_TYPE_SHARES = (0.25, 0.15, 0.12, 0.08, 0.14, 0.16, 0.05, 0.03, 0.02)
HOUSEKEEPING_GENES = (
    "ACTB", "GAPDH", "B2M", "MALAT1", "TMSB4X", "EEF1A1", "TPT1", "FTL", "FTH1", "RPL13",
    "RPS27A", "TGFB1",
)  # fmt: skip
MITOCHONDRIAL_GENES = (
    "MT-ND1", "MT-ND2", "MT-CO1", "MT-CO2", "MT-ATP8", "MT-ATP6", "MT-CO3", "MT-ND3", "MT-ND4L",
    "MT-ND4", "MT-ND5", "MT-ND6", "MT-CYB",
)  # fmt: skip

# gzip's default level 9 is some 40 times slower than 4 for files only 5% smaller.
_GZIP_LEVEL = 4
_MODULES = 64
_GAMMA_SHAPE = 4.0
_LIBRARY_SIGMA = 0.35
# Marker expression, in units of the 99th percentile of base expression, in and out of the cluster.
_MARKER_HIGH = 3.0
_MARKER_LOW = 0.02
_PROGRAMME_FOLD = 6.0
# Seed streams: (seed, stream) for the model, (seed, stream, block) for a block's draws.
_MODEL, _LABELS, _COUNTS, _BARCODES, _BRIDGE = range(5)


@dataclass(frozen=True)
class SyntheticDataset:
    """A PBMC-like dataset of `n_cells` x `n_genes` counts, defined by its parameters.

    The number of nonzeros follows from `counts_per_cell` (mean UMIs per cell) and `n_genes`.
    With fewer genes than named ones, the gene list is cut short.
    """

    n_cells: int
    n_genes: int
    seed: int = 0
    n_clusters: int = 8
    counts_per_cell: float = 2000.0
    rows_per_block: int = 2048
    # The share of cells on a continuum from the first cluster to the second (naive to memory
    # CD4 T cells): each of their UMIs comes from the second's profile with the cell's progress
    # along it, uniform in [0, 1]. A trajectory to find; none by default.
    bridge_share: float = 0.0

    def __post_init__(self):
        if not 1 <= self.n_clusters <= len(MARKERS_BY_CELL_TYPE):
            raise ValueError(f"n_clusters must be 1 to {len(MARKERS_BY_CELL_TYPE)}")
        if self.n_cells < 1 or self.n_genes < 1 or self.rows_per_block < 1:
            raise ValueError("n_cells, n_genes and rows_per_block must be positive")
        if not 0 <= self.bridge_share <= 1 or (self.bridge_share and self.n_clusters < 2):
            raise ValueError("bridge_share must be in [0, 1], with at least 2 clusters")

    @property
    def n_blocks(self) -> int:
        return -(-self.n_cells // self.rows_per_block)

    @property
    def cluster_names(self) -> list[str]:
        return list(MARKERS_BY_CELL_TYPE)[: self.n_clusters]

    @cached_property
    def gene_names(self) -> np.ndarray:
        named = list(dict.fromkeys(_named_genes()))
        fillers = [f"GENE{index}" for index in range(len(named), self.n_genes)]
        return np.array((named + fillers)[: self.n_genes], dtype=str)

    @cached_property
    def gene_ids(self) -> np.ndarray:
        return np.array([f"ENSG{index:011d}" for index in range(1, self.n_genes + 1)])

    @cached_property
    def barcodes(self) -> np.ndarray:
        # i -> a*i + b mod 4**16 with odd a is a bijection: unique barcodes that look random.
        offset = int(np.random.default_rng([self.seed, _BARCODES]).integers(2**32))
        codes = (np.arange(self.n_cells, dtype=np.uint64) * np.uint64(2654435761) + offset) % (
            np.uint64(2**32)
        )
        digits = (codes[:, None] >> (2 * np.arange(15, -1, -1, dtype=np.uint64))) & np.uint64(3)
        letters = np.frombuffer(b"ACGT", dtype="S1")[digits.astype(np.intp)]
        return np.char.add(np.char.decode(letters.view("S16").ravel(), "ascii"), "-1")

    @cached_property
    def cluster_labels(self) -> np.ndarray:
        """The cluster index of each cell."""
        return np.concatenate([self._block_bridge(block)[0] for block in range(self.n_blocks)])

    @cached_property
    def bridge_progress(self) -> np.ndarray:
        """Each cell's progress along the continuum from the first cluster to the second, NaN
        for cells not on it."""
        return np.concatenate([self._block_bridge(block)[1] for block in range(self.n_blocks)])

    def row_block(self, block: int) -> sparse.csr_matrix:
        """Rows block*rows_per_block onwards: canonical float32 CSR, cells x genes."""
        labels, progress = self._block_bridge(block)
        model = self._model
        rng = np.random.default_rng([self.seed, _COUNTS, block])
        n = len(labels)
        mean_log = np.log(self.counts_per_cell) - _LIBRARY_SIGMA**2 / 2
        library_sizes = rng.poisson(rng.lognormal(mean_log, _LIBRARY_SIGMA, n))
        module_factors = rng.gamma(_GAMMA_SHAPE, 1 / _GAMMA_SHAPE, (n, _MODULES))
        module_weights = model.module_mass[labels] * module_factors
        module_weights /= module_weights.sum(axis=1, keepdims=True)
        umis_by_module = rng.multinomial(library_sizes, module_weights)
        # Each UMI picks its gene within its module by inverting the cluster's cumulative
        # distribution; clusters are laid end to end, cluster k on [k, k + 1).
        pairs = umis_by_module.ravel()
        cells = np.repeat(np.repeat(np.arange(n, dtype=np.int32), _MODULES), pairs)
        modules = np.repeat(np.tile(np.arange(_MODULES, dtype=np.int32), n), pairs)
        clusters = labels[cells]
        on_bridge = np.isfinite(progress)[cells]
        if on_bridge.any():
            second = rng.random(int(on_bridge.sum())) < progress[cells[on_bridge]]
            clusters[on_bridge] = second.astype(clusters.dtype)
        low = model.module_start_mass[clusters, modules]
        high = model.module_start_mass[clusters, modules + 1]
        targets = clusters + low + rng.random(len(cells)) * (high - low)
        positions = np.searchsorted(model.cumulative, targets, side="right")
        positions = np.clip(
            positions - clusters * self.n_genes,
            model.module_bounds[modules],
            model.module_bounds[modules + 1] - 1,
        )
        genes = model.gene_order[positions]
        counts = sparse.coo_matrix(
            (np.ones(len(genes), np.float32), (cells, genes)), shape=(n, self.n_genes)
        )
        return canonical_csr(counts)

    def row_blocks(self) -> Iterator[sparse.csr_matrix]:
        return (self.row_block(block) for block in range(self.n_blocks))

    def _block_bridge(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """A block's cluster labels, and its cells' progress along the continuum (NaN off it);
        a cell on it is labelled with the nearer of the two clusters."""
        labels = self._block_labels(block)
        progress = np.full(len(labels), np.nan)
        if self.bridge_share:
            rng = np.random.default_rng([self.seed, _BRIDGE, block])
            on_bridge = rng.random(len(labels)) < self.bridge_share
            progress[on_bridge] = rng.random(int(on_bridge.sum()))
            labels[on_bridge] = (progress[on_bridge] >= 0.5).astype(labels.dtype)
        return labels, progress

    def _block_labels(self, block: int) -> np.ndarray:
        start = block * self.rows_per_block
        n = min(self.rows_per_block, self.n_cells - start)
        shares = np.array(CELL_TYPE_SHARES[: self.n_clusters])
        rng = np.random.default_rng([self.seed, _LABELS, block])
        return rng.choice(self.n_clusters, size=n, p=shares / shares.sum())

    @cached_property
    def _model(self) -> "_Model":
        return _Model.build(self)


@dataclass(frozen=True)
class _Model:
    """Per cluster, the probability of each gene, arranged for sampling module by module."""

    gene_order: np.ndarray  # genes grouped by module
    module_bounds: np.ndarray  # module m is gene_order[bounds[m]:bounds[m + 1]]
    module_start_mass: np.ndarray  # clusters x (modules + 1): cumulative mass at each bound
    module_mass: np.ndarray  # clusters x modules
    cumulative: np.ndarray  # cluster k's cumulative mass over gene_order, plus k, end to end

    @classmethod
    def build(cls, dataset: SyntheticDataset) -> "_Model":
        rng = np.random.default_rng([dataset.seed, _MODEL])
        n_genes, n_clusters = dataset.n_genes, dataset.n_clusters
        index_of = {name: index for index, name in enumerate(dataset.gene_names)}
        base = rng.lognormal(0.0, 1.2, n_genes)
        level = np.quantile(base, 0.99)
        for name in HOUSEKEEPING_GENES:
            if name in index_of:
                base[index_of[name]] = 10 * level
        for name in MITOCHONDRIAL_GENES:
            if name in index_of:
                base[index_of[name]] = 1.5 * level
        expression = np.tile(base, (n_clusters, 1))
        fillers = np.flatnonzero(np.char.startswith(dataset.gene_names, "GENE"))
        programme_size = min(len(fillers), max(10, n_genes // 40))
        for cluster in range(n_clusters):
            programme = rng.choice(fillers, programme_size, replace=False)
            expression[cluster, programme] *= _PROGRAMME_FOLD
        markers = {name for names in MARKERS_BY_CELL_TYPE.values() for name in names}
        for name in markers & index_of.keys():
            expression[:, index_of[name]] = _MARKER_LOW * level
        for cluster, cell_type in enumerate(dataset.cluster_names):
            for name in MARKERS_BY_CELL_TYPE[cell_type]:
                if name in index_of:
                    expression[cluster, index_of[name]] = _MARKER_HIGH * level
        probabilities = expression / expression.sum(axis=1, keepdims=True)

        module_of_gene = rng.integers(0, _MODULES, n_genes)
        gene_order = np.argsort(module_of_gene, kind="stable")
        module_bounds = np.searchsorted(module_of_gene[gene_order], np.arange(_MODULES + 1))
        ordered = probabilities[:, gene_order]
        cumulative = np.cumsum(ordered, axis=1)
        cumulative /= cumulative[:, -1:]
        start_mass = np.concatenate([np.zeros((n_clusters, 1)), cumulative], axis=1)
        module_start_mass = start_mass[:, module_bounds]
        return cls(
            gene_order=gene_order,
            module_bounds=module_bounds,
            module_start_mass=module_start_mass,
            module_mass=np.diff(module_start_mass, axis=1),
            cumulative=(cumulative + np.arange(n_clusters)[:, None]).ravel(),
        )


def make_pbmc_sample(seed: int = 0) -> SyntheticDataset:
    """The small sample the local emulator is seeded with: 2700 cells x 2000 genes, 8 clusters,
    a fifth of the cells on a continuum from naive to memory CD4 T cells (a trajectory).

    Under 2731 cells, Scrublet's manifold (the cells and twice as many simulated doublets) stays
    under the 8192 points below which scanpy finds exact neighbours: its first GetDoubletScore
    takes a second, not the 30 s of compiling pynndescent's descent (numba will not cache it)."""
    return SyntheticDataset(
        n_cells=2700, n_genes=2000, seed=seed, counts_per_cell=1500, bridge_share=0.2
    )


def write_10x_mtx(
    fs: fsspec.AbstractFileSystem, folder: str, dataset: SyntheticDataset, *, version: int = 3
) -> None:
    """A Cell Ranger matrix folder: v3 gzipped with features.tsv.gz, or v2 plain with genes.tsv."""
    if version not in (2, 3):
        raise ValueError(f"version must be 2 or 3, not {version}")
    folder = folder.rstrip("/")
    fs.makedirs(folder, exist_ok=True)
    gzipped = version == 3
    suffix = ".gz" if gzipped else ""
    features = {"id": dataset.gene_ids, "name": dataset.gene_names}
    if version == 3:
        features["type"] = "Gene Expression"
    features_file = "features.tsv" if version == 3 else "genes.tsv"
    for file, table in (
        (features_file, pd.DataFrame(features)),
        ("barcodes.tsv", pd.DataFrame({"barcode": dataset.barcodes})),
    ):
        text = table.to_csv(sep="\t", header=False, index=False).encode()
        with fs.open(f"{folder}/{file}{suffix}", "wb") as out:
            out.write(gzip.compress(text, _GZIP_LEVEL) if gzipped else text)

    # The header needs the entry count, known only at the end: the entries go to a local
    # temporary file first. A gzip file may hold several members, so the header is one member
    # and the already compressed body the next.
    with tempfile.TemporaryFile() as body:
        n_entries = 0
        with (
            gzip.GzipFile(fileobj=body, mode="wb", compresslevel=_GZIP_LEVEL)
            if gzipped
            else nullcontext(body) as stream
        ):
            for block, counts in enumerate(dataset.row_blocks()):
                entries = counts.tocoo()
                table = pd.DataFrame(
                    {
                        "gene": entries.col + 1,
                        "cell": entries.row + block * dataset.rows_per_block + 1,
                        "count": entries.data.astype(np.int64),
                    }
                )
                stream.write(table.to_csv(sep=" ", header=False, index=False).encode())
                n_entries += counts.nnz
        header = (
            "%%MatrixMarket matrix coordinate integer general\n%\n"
            f"{dataset.n_genes} {dataset.n_cells} {n_entries}\n"
        ).encode()
        body.seek(0)
        with fs.open(f"{folder}/matrix.mtx{suffix}", "wb") as out:
            out.write(gzip.compress(header, _GZIP_LEVEL) if gzipped else header)
            shutil.copyfileobj(body, out)


def write_10x_h5(fs: fsspec.AbstractFileSystem, path: str, dataset: SyntheticDataset) -> None:
    """A Cell Ranger v3 `.h5` (genes x cells CSC under `matrix/`)."""
    with _local_file(fs, path) as local, h5py.File(local, "w") as file:
        matrix = file.create_group("matrix")
        matrix["barcodes"] = dataset.barcodes.astype("S")
        matrix["shape"] = np.array([dataset.n_genes, dataset.n_cells], dtype=np.int32)
        features = matrix.create_group("features")
        features["id"] = dataset.gene_ids.astype("S")
        features["name"] = dataset.gene_names.astype("S")
        features["feature_type"] = np.full(dataset.n_genes, b"Gene Expression")
        features["genome"] = np.full(dataset.n_genes, b"GRCh38")
        features["_all_tag_keys"] = np.array([b"genome"])
        _write_csr(matrix, dataset, data_dtype=np.int32, indices_dtype=np.int64)


def write_h5ad(fs: fsspec.AbstractFileSystem, path: str, dataset: SyntheticDataset) -> None:
    """An AnnData `.h5ad` with CSR counts in X, obs `cell_type` and var `gene_ids`."""
    with _local_file(fs, path) as local, h5py.File(local, "w") as file:
        file.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        matrix = file.create_group("X")
        matrix.attrs.update(
            {
                "encoding-type": "csr_matrix",
                "encoding-version": "0.1.0",
                "shape": (dataset.n_cells, dataset.n_genes),
            }
        )
        _write_csr(matrix, dataset, data_dtype=np.float32, indices_dtype=np.int32)
        cell_types = pd.Categorical.from_codes(dataset.cluster_labels, dataset.cluster_names)
        obs = pd.DataFrame({"cell_type": cell_types}, index=dataset.barcodes)
        var = pd.DataFrame({"gene_ids": dataset.gene_ids}, index=dataset.gene_names)
        anndata.io.write_elem(file, "obs", obs)
        anndata.io.write_elem(file, "var", var)


def _write_csr(group: h5py.Group, dataset: SyntheticDataset, data_dtype, indices_dtype) -> None:
    """`data`, `indices`, `indptr` of the dataset's rows, appended block by block."""
    options = {"shape": (0,), "maxshape": (None,), "chunks": (1 << 18,), "compression": "gzip"}
    data = group.create_dataset("data", dtype=data_dtype, **options)
    indices = group.create_dataset("indices", dtype=indices_dtype, **options)
    indptr = group.create_dataset("indptr", dtype=np.int64, data=[0], **(options | {"shape": None}))
    for counts in dataset.row_blocks():
        offset = data.shape[0]
        for stored, values in (
            (data, counts.data),
            (indices, counts.indices),
            (indptr, counts.indptr[1:].astype(np.int64) + offset),
        ):
            start = stored.shape[0]
            stored.resize((start + len(values),))
            stored[start:] = values


@contextmanager
def _local_file(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[str]:
    """A local path to write `path` to; uploaded to `fs` afterwards unless `fs` is local."""
    if isinstance(fs, LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="worker-synthetic-") as directory:
        local = str(Path(directory) / Path(path).name)
        yield local
        fs.put(local, path)


def _named_genes() -> list[str]:
    markers = [name for names in MARKERS_BY_CELL_TYPE.values() for name in names]
    return [*markers, *HOUSEKEEPING_GENES, *MITOCHONDRIAL_GENES]


def as_source_sample(dataset: SyntheticDataset, name: str = "synthetic") -> SourceSample:
    """The dataset as a source sample read straight from the generator, with no file."""
    return SourceSample(
        name=name,
        n_cells=dataset.n_cells,
        n_genes=dataset.n_genes,
        barcodes=dataset.barcodes,
        gene_ids=dataset.gene_ids,
        gene_names=dataset.gene_names,
        read_blocks=partial(_regrouped_blocks, dataset),
    )


def _regrouped_blocks(
    dataset: SyntheticDataset, rows_per_block: int
) -> Iterator[sparse.csr_matrix]:
    pending: list[sparse.csr_matrix] = []
    pending_rows = 0
    for block in dataset.row_blocks():
        pending.append(block)
        pending_rows += block.shape[0]
        while pending_rows >= rows_per_block:
            joined = sparse.vstack(pending, format="csr")
            yield joined[:rows_per_block]
            pending = [joined[rows_per_block:]]
            pending_rows -= rows_per_block
    if pending_rows:
        yield sparse.vstack(pending, format="csr")
