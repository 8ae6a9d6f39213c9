"""Highly variable genes, scanpy's `flavor="seurat"`, from merged gene moments."""

import numpy as np
import pandas as pd

from worker.compute.arithmetic import mean_variance
from worker.compute.qc import GeneMoments

N_BINS = 20


def seurat_hvg(moments: GeneMoments, n_cells: int, n_top_genes: int = 2000) -> pd.DataFrame:
    """`means`, `dispersions`, `dispersions_norm`, `highly_variable` per gene.

    Equal to `sc.pp.highly_variable_genes(flavor="seurat", n_top_genes=...)` after
    `normalize_total(target_sum=1e4)` and `log1p`, except with fewer genes than
    `n_top_genes`: then every gene with nonzero variance is highly variable (the contract's
    rule), where scanpy takes every gene whose normalised dispersion is not NaN.
    """
    mean, variance = mean_variance(moments.normalised_sum, moments.normalised_sum_sq, n_cells)
    mean[mean == 0] = 1e-12
    dispersion = variance / mean
    dispersion[dispersion == 0] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        dispersion = np.log(dispersion)
    mean = np.log1p(mean)

    genes = pd.DataFrame({"means": mean, "dispersions": dispersion})
    mean_bin = pd.cut(genes["means"], bins=N_BINS)
    bin_stats = genes.groupby(mean_bin, observed=True)["dispersions"].agg(avg="mean", dev="std")
    # A bin holding one gene has no standard deviation: scanpy sets that gene's normalised
    # dispersion to 1 by dividing by its own dispersion.
    single = bin_stats["dev"].isnull()
    bin_stats.loc[single, "dev"] = bin_stats.loc[single, "avg"]
    bin_stats.loc[single, "avg"] = 0
    gene_stats = bin_stats.loc[mean_bin].set_index(genes.index)
    dispersion_norm = ((genes["dispersions"] - gene_stats["avg"]) / gene_stats["dev"]).to_numpy()

    if len(genes) < n_top_genes:
        highly_variable = variance > 0
    else:
        ranked = np.sort(dispersion_norm[~np.isnan(dispersion_norm)])[::-1]
        cutoff = ranked[min(n_top_genes, ranked.size) - 1]
        # Ties at the cutoff are all kept, so more than n_top_genes genes may be selected.
        highly_variable = np.nan_to_num(dispersion_norm, nan=-np.inf) >= cutoff

    genes["dispersions_norm"] = dispersion_norm.astype(np.float32)
    genes["highly_variable"] = highly_variable
    return genes
