"""Scrublet's doublet scores as `sc.pp.scrublet` computes them with its defaults, in a fraction of
its memory: the z-scored matrices of the observed and simulated cells are never made dense.

scanpy z-scores both (every entry then stored) and hands them to scikit-learn's PCA as dense
arrays: some 700 kB per observed cell at 4,500 variable genes (7.2 GB for 10,000 cells of the
benchmarks' data). The z-scored matrix is the normalised one with each gene scaled, less a
constant row, and PCA centres its input anyway, so scikit-learn's ARPACK PCA of the scaled
sparse matrix (centred implicitly, from the same start vector) finds the same components.
Every other step is scanpy's own.
"""

import numpy as np
from scipy import sparse


def scrublet_scores(counts: sparse.csr_matrix, random_state: int) -> np.ndarray:
    """Each cell's doublet score (float32); NaN for the cells Scrublet leaves out (fewer than 3
    genes)."""
    # Imported here, not at the top: the queue process imports every task module for its schema.
    import scanpy as sc
    from anndata import AnnData
    from scanpy.preprocessing._scrublet import scrublet_simulate_doublets
    from scanpy.preprocessing._scrublet.core import Scrublet
    from scanpy.preprocessing._utils import _get_mean_var
    from sklearn.decomposition import PCA

    # The steps of scanpy's `_run_scrublet`, with its defaults.
    observed = AnnData(counts)
    observed.obs_names = np.arange(counts.shape[0]).astype(str)
    sc.pp.filter_genes(observed, min_cells=3)
    sc.pp.filter_cells(observed, min_genes=3)
    observed.layers["raw"] = observed.X.copy()
    sc.pp.normalize_total(observed)
    observed.layers["log1p"] = observed.X.copy()
    sc.pp.log1p(observed, layer="log1p")
    sc.pp.highly_variable_genes(observed, layer="log1p")
    del observed.layers["log1p"]
    observed = observed[:, observed.var["highly_variable"]].copy()
    simulated = scrublet_simulate_doublets(observed, layer="raw", random_seed=random_state)
    del observed.layers["raw"]
    sc.pp.normalize_total(observed, target_sum=1e6)
    sc.pp.normalize_total(simulated, target_sum=1e6)

    # Then those of `_scrublet_call_doublets`, the z-scoring and PCA kept sparse.
    scrub = Scrublet(
        observed.X,
        n_neighbors=round(0.5 * np.sqrt(observed.n_obs)),
        expected_doublet_rate=0.05,
        stdev_doublet_rate=0.02,
        random_state=random_state,
    )
    observed_norm = sparse.csr_matrix(observed.X, dtype=np.float64)
    simulated_norm = sparse.csr_matrix(simulated.X, dtype=np.float64)
    _, gene_variances = _get_mean_var(observed_norm, axis=0)
    per_gene = sparse.diags(1 / np.sqrt(gene_variances))
    observed_scaled, simulated_scaled = observed_norm @ per_gene, simulated_norm @ per_gene
    # Scrublet's own generator, as scanpy hands it over: its draws follow the same sequence.
    pca = PCA(n_components=30, random_state=scrub._random_state, svd_solver="arpack")
    pca.fit(observed_scaled)
    scrub.set_manifold(pca.transform(observed_scaled), pca.transform(simulated_scaled))
    scrub.doublet_parents_ = simulated.obsm["doublet_parents"]
    scrub.calculate_doublet_scores(use_approx_neighbors=None, distance_metric="euclidean")
    scrub.call_doublets(threshold=None, verbose=False)

    scores = np.full(counts.shape[0], np.nan, dtype=np.float32)
    scores[observed.obs_names.astype(int)] = scrub.doublet_scores_obs_
    return scores
