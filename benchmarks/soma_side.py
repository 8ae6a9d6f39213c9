"""The TileDB-SOMA side: the tier's h5ad ingested with `tiledbsoma.io.from_h5ad`, then the
per-gene reads the platform makes, each also read from our store (written by our side just
before, on a local folder) in the same process, one after the other, so that the two stores are
timed alike; run in a process of its own, so its peak memory is its own.

Both sides return the same thing for each read, the raw counts of the genes in the cells as a
scipy matrix (cells x genes), and the benchmark checks they hold the same entries.
"""

import os
import shutil
import time
from pathlib import Path

import numpy as np
import tiledbsoma
import tiledbsoma.io
from scipy import sparse

from benchmarks.measure import RssSampler, peak_rss_mib, repeat, summary
from benchmarks.tiers import ONE_GENE, Tier
from worker.settings import AwsSettings
from worker.store.experiment import ExperimentStore, open_experiment
from worker.tasks.gene_expression import gene_lookup

MEASUREMENT = "RNA"
# A read of one gene scans TileDB-SOMA's whole X (its tiles are ordered by cell): seconds at
# 200k cells, so each read gets at most this long for its runs (at least 3).
QUERY_BUDGET_S = 60.0
QUERIES = (
    "read 1 gene, all cells",
    "read 20 genes, all cells",
    "read 1 gene, one cluster's cells",
)


def run(tier: Tier, store_root: Path, experiment_id: str) -> dict:
    uri = tier.folder / "soma"
    shutil.rmtree(uri, ignore_errors=True)
    with RssSampler([os.getpid()]) as sampler:
        started = time.perf_counter()
        tiledbsoma.io.from_h5ad(str(uri), tier.source, MEASUREMENT)
        ingest = {
            "in_process": summary([time.perf_counter() - started]),
            "peak_rss_mib": sampler.take_peak_mib(),
        }
        ours_store = open_experiment(str(store_root), experiment_id, AwsSettings())
        cluster_cells = np.flatnonzero(tier.dataset.cluster_labels == 0)
        selections = {
            QUERIES[0]: ([ONE_GENE], None),
            QUERIES[1]: (tier.twenty_genes, None),
            QUERIES[2]: ([ONE_GENE], cluster_cells),
        }
        with tiledbsoma.Experiment.open(str(uri)) as experiment:
            soma = SomaReader(experiment)
            queries = {}
            for name, (genes, cells) in selections.items():
                check_same_entries(soma.counts(genes, cells), ours_counts(ours_store, genes, cells))
                queries[name] = {
                    side: repeat(
                        lambda read=read, genes=genes, cells=cells: _timed(read, genes, cells),
                        tier.light_repeats,
                        sampler,
                        budget_s=QUERY_BUDGET_S,
                    )
                    for side, read in (
                        ("soma", soma.counts),
                        ("ours", lambda genes, cells: ours_counts(ours_store, genes, cells)),
                    )
                }
    return {
        "ingest": ingest,
        "size_on_disk_mib": {
            "soma": folder_mib(uri),
            "ours": folder_mib(Path(ours_store.url)),
        },
        "queries": queries,
        "peak_rss_mib_by_process": {"TileDB-SOMA process": peak_rss_mib()},
    }


class SomaReader:
    """Reads of an opened SOMA experiment's raw counts, by gene name, the way the Census is
    read: `X["data"].read(coords)` on the soma_joinids of the cells and genes."""

    def __init__(self, experiment: tiledbsoma.Experiment):
        measurement = experiment.ms[MEASUREMENT]
        var = measurement.var.read(column_names=["soma_joinid", "var_id"]).concat()
        self._gene_joinids = dict(
            zip(var["var_id"].to_pylist(), var["soma_joinid"].to_numpy(), strict=True)
        )
        self._counts = measurement.X["data"]
        self._n_cells = int(self._counts.shape[0])

    def counts(self, genes: list[str], cells: np.ndarray | None) -> sparse.csc_array:
        joinids = np.array([self._gene_joinids[gene] for gene in genes], dtype=np.int64)
        rows = slice(None) if cells is None else cells
        table = self._counts.read(coords=(rows, joinids)).tables().concat()
        cell_joinids = table["soma_dim_0"].to_numpy()
        columns = np.searchsorted(np.sort(joinids), table["soma_dim_1"].to_numpy())
        order = np.argsort(joinids)
        if cells is not None:
            cell_joinids = np.searchsorted(cells, cell_joinids)
        n_rows = self._n_cells if cells is None else len(cells)
        coo = sparse.coo_array(
            (table["soma_data"].to_numpy(), (cell_joinids, order[columns])),
            shape=(n_rows, len(genes)),
        )
        return coo.tocsc()


def ours_counts(
    store: ExperimentStore, genes: list[str], cells: np.ndarray | None
) -> sparse.csc_array:
    """The same read from our store: the genes' slices of the gene-major copy."""
    lookup = gene_lookup(store)
    counts = store.counts_by_gene(np.array([lookup[gene] for gene in genes]))
    return counts if cells is None else sparse.csc_array(counts[cells])


def check_same_entries(soma: sparse.csc_array, ours: sparse.csc_array) -> None:
    if soma.shape != ours.shape or (soma != ours).nnz:
        raise RuntimeError(f"TileDB-SOMA and our store disagree on a read ({soma.shape})")


def folder_mib(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / (1 << 20)


def _timed(read, genes, cells) -> dict[str, float]:
    started = time.perf_counter()
    read(genes, cells)
    return {"in_process": time.perf_counter() - started}
