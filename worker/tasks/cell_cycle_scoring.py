"""CellCycleScoring (Cellenics v2): each cell's phase (G1, S, G2M) by scanpy's
`score_genes_cell_cycle` on the published S and G2/M genes, out of core, written as the `Phase`
cell set class (replacing any earlier one) as the platform's R worker writes it."""

from typing import Literal

import numpy as np
import pandas as pd

from worker.compute.arithmetic import entry_rows, log_normalise
from worker.compute.gene_scores import cell_cycle_phase, control_genes
from worker.data.cell_cycle_genes import G2M_GENES, S_GENES
from worker.store.cell_sets import PALETTE
from worker.store.experiment import ExperimentStore
from worker.store.gene_blocks import map_gene_blocks
from worker.tasks.base import Task, TaskContext, V2TaskBody

PHASE_KEY = "Phase"
UNDETERMINED = "Undetermined"


class CellCycleScoringBody(V2TaskBody):
    """Upstream reads nothing of the body (and its API has no schema wired for it): the name."""

    name: Literal["CellCycleScoring"]


def log_normalised_sums(counts, total_counts: np.ndarray) -> np.ndarray:
    """Per gene of a block (cells x genes, CSC): the sum of its log-normalised values."""
    values = log_normalise(counts.data, total_counts[counts.indices])
    return np.bincount(entry_rows(counts.indptr), weights=values, minlength=counts.shape[1])


def gene_means(store: ExperimentStore) -> pd.Series:
    """Each gene's mean log-normalised value over every cell, by gene name."""
    sums = np.concatenate(map_gene_blocks(store, log_normalised_sums, store.total_counts))
    return pd.Series(sums / store.n_cells, index=pd.Index(store.var["gene_names"], dtype="string"))


def listed_genes(gene_names: pd.Index, symbols: list[str]) -> list[str]:
    """The experiment's names of the listed symbols, matched regardless of case (mouse genes
    are written `Mcm5`), in the list's order."""
    by_upper = {}
    for name in gene_names:
        by_upper.setdefault(name.upper(), name)
    return [by_upper[symbol] for symbol in symbols if symbol in by_upper]


def cell_means(store: ExperimentStore, names: pd.Index, gene_names: pd.Index) -> np.ndarray:
    """Each cell's mean log-normalised value over the genes `names`."""
    values = store.log_normalised(np.sort(gene_names.get_indexer(names)))
    return np.asarray(values.sum(axis=1, dtype=np.float64)).ravel() / len(names)


def cell_cycle_phases(context: TaskContext, store: ExperimentStore) -> np.ndarray:
    context.report_progress(0, 3, "Averaging every gene")
    means = gene_means(store)
    s_genes, g2m_genes = (listed_genes(means.index, genes) for genes in (S_GENES, G2M_GENES))
    if not s_genes or not g2m_genes:
        # As the platform: a failed scoring leaves every cell undetermined.
        return np.full(store.n_cells, UNDETERMINED, dtype=object)
    ctrl_size = min(len(S_GENES), len(G2M_GENES))
    scores = []
    for step, genes in enumerate((s_genes, g2m_genes), start=1):
        context.report_progress(step, 3, "Scoring the cell cycle genes")
        controls = control_genes(means, genes, ctrl_size)
        scores.append(
            cell_means(store, pd.Index(genes), means.index)
            - cell_means(store, controls, means.index)
        )
    return cell_cycle_phase(*scores)


def phase_class(phases: np.ndarray) -> dict:
    """The `Phase` class: a child per phase, in the order phases first appear among cells."""
    names, first = np.unique(phases, return_index=True)
    children = []
    for index, phase in enumerate(names[np.argsort(first)]):
        children.append(
            {
                "key": f"{PHASE_KEY}-{phase}",
                "name": phase,
                "rootNode": False,
                "type": "cellSets",
                "color": PALETTE[index % len(PALETTE)],
                "cellIds": np.flatnonzero(phases == phase).tolist(),
            }
        )
    return {
        "key": PHASE_KEY,
        "name": PHASE_KEY,
        "rootNode": True,
        "type": "cellSets",
        "children": children,
    }


def cell_cycle_scoring(context: TaskContext, body: CellCycleScoringBody) -> dict:
    hierarchy = phase_class(cell_cycle_phases(context, context.store()))
    context.report_progress(3, 3, "Writing the Phase cell sets")
    context.change_cell_sets(
        [
            {"$match": {"query": f'$[?(@.key == "{PHASE_KEY}")]', "value": {"$remove": True}}},
            {"$prepend": hierarchy},
        ]
    )
    return hierarchy


V2_TASK = Task(
    name="CellCycleScoring", body=CellCycleScoringBody, cacheable=False, compute=cell_cycle_scoring
)
