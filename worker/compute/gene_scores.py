"""Gene set scores as scanpy's `tl.score_genes` computes them (Seurat's module score): the mean
of a set's genes in each cell minus the mean of control genes drawn from the same bins of
average expression; and `tl.score_genes_cell_cycle`'s phase from the S and G2/M scores."""

import numpy as np
import pandas as pd

N_BINS = 25


def control_genes(
    gene_means: pd.Series,
    gene_list: list[str],
    ctrl_size: int,
    *,
    n_bins: int = N_BINS,
    random_state: int = 0,
) -> pd.Index:
    """The control genes of `gene_list`, as `score_genes(ctrl_as_ref=True)` draws them:
    `gene_means` (every gene's mean over all cells, indexed by name) cut into bins of equal
    size by rank; in each bin holding a listed gene, `ctrl_size` genes drawn (numpy's
    RandomState seeded with `random_state`, scanpy's draws), the listed genes then left out."""
    random = np.random.RandomState(random_state)
    gene_means = gene_means[np.isfinite(gene_means)]
    n_items = int(np.round(len(gene_means) / (n_bins - 1)))
    cut_of = gene_means.rank(method="min") // n_items
    chosen = pd.Index([], dtype="string")
    for cut in np.unique(cut_of.loc[gene_list]):
        genes = cut_of[cut_of == cut].index
        if ctrl_size < len(genes):
            genes = genes.to_series().sample(ctrl_size, random_state=random).index
        chosen = chosen.union(genes.difference(gene_list))
    return chosen


def cell_cycle_phase(s_score: np.ndarray, g2m_score: np.ndarray) -> np.ndarray:
    """`S` by default, `G2M` where its score is higher, `G1` where both are negative."""
    phase = np.where(g2m_score > s_score, "G2M", "S")
    return np.where((s_score < 0) & (g2m_score < 0), "G1", phase).astype(object)
