"""The scanpy side: its standard in-memory pipeline on the same h5ad, then our queries'
equivalents on the same AnnData; run in a process of its own, so its peak memory is its own."""

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import scanpy as sc
from scipy import sparse

from benchmarks.measure import RssSampler, peak_rss_mib, repeat, summary
from benchmarks.tiers import LIST_GENES_FILTER, LIST_GENES_LIMIT, N_TOP_GENES, ONE_GENE, Tier
from worker.compute.numba_cache import cache_compiled_code


def estimated_peak_bytes(n_cells: int, nnz: int) -> int:
    """A rough peak of the pipeline, to skip what cannot fit: the CSR counts (float32 values,
    int32 indices) about three times over (as read, normalised, the copy `highly_variable_genes`
    takes), and the scaled highly variable genes, dense float32 with a float64 temporary."""
    return 3 * nnz * 8 + n_cells * N_TOP_GENES * (4 + 8)


# numba compiles the neighbour search on first use: both sides are measured warm, this one
# after a first search on random points, ours on Dask workers that compiled when they started.
WARM_UP_CELLS, WARM_UP_DIMENSIONS = 20_000, 50


def run(tier: Tier) -> dict:
    # numba's compiled code kept on disk as on our side (umap-learn's, which scanpy's neighbours
    # import, would otherwise compile for 26 s of CPU in every run); the warm-up below still
    # leaves compiling and loading out of the timings.
    cache_compiled_code()
    if tier.numba_warm:
        points = np.random.default_rng(0).normal(size=(WARM_UP_CELLS, WARM_UP_DIMENSIONS))
        sc.pp.neighbors(sc.AnnData(obsm={"X_pca": points.astype(np.float32)}), use_rep="X_pca")
    with RssSampler([os.getpid()]) as sampler:
        steps: dict[str, float] = {}
        adata = _pipeline(tier, steps)
        measures = {
            "PrepareExperiment": {
                "in_process": summary([sum(steps.values())]),
                "peak_rss_mib": sampler.take_peak_mib(),
            }
        }
        first, second = tier.compared_cell_types
        light, heavy = tier.light_repeats, tier.heavy_repeats
        queries = {
            "ListGenes": (lambda: _list_genes(adata), light),
            "GeneExpression, 1 gene": (lambda: adata[:, [ONE_GENE]].X.toarray(), light),
            "GeneExpression, 20 genes": (lambda: adata[:, tier.twenty_genes].X.toarray(), light),
            "GetEmbedding pca": (lambda: adata.obsm["X_pca"][:, :2].copy(), light),
            "DifferentialExpression": (
                lambda: sc.tl.rank_genes_groups(
                    adata, "cell_type", groups=[first], reference=second, method="wilcoxon",
                    pts=True,
                ),
                heavy,
            ),
        }  # fmt: skip
        for name, (query, repeats) in queries.items():
            measures[name] = repeat(lambda query=query: _timed(query), repeats, sampler)
    return {
        "measures": measures,
        "pipeline_steps_s": steps,
        "peak_rss_mib_by_process": {"scanpy process": peak_rss_mib()},
    }


def _pipeline(tier: Tier, steps: dict[str, float]) -> sc.AnnData:
    """read, QC, normalise, log, HVG, scale and PCA on the HVG, neighbours, Louvain."""
    with _step(steps, "read_h5ad"):
        adata = sc.read_h5ad(tier.source)
        # The generator writes int64 indptr beside int32 indices, which scipy's kernels refuse
        # ("Output dtype not compatible with inputs"); re-wrapping gives them one dtype and
        # shares the arrays.
        counts = adata.X
        adata.X = sparse.csr_matrix((counts.data, counts.indices, counts.indptr), counts.shape)
    with _step(steps, "calculate_qc_metrics"):
        adata.var["mt"] = adata.var_names.str.startswith("MT-")
        # What our QC stores: total counts, genes and mitochondrial percentage per cell.
        sc.pp.calculate_qc_metrics(
            adata, qc_vars=["mt"], percent_top=None, log1p=False, inplace=True
        )
    with _step(steps, "normalize_total"):
        sc.pp.normalize_total(adata, target_sum=1e4)
    with _step(steps, "log1p"):
        sc.pp.log1p(adata)
    with _step(steps, "highly_variable_genes"):
        sc.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=N_TOP_GENES)
    with _step(steps, "scale"):
        # The full log-normalised matrix stays in X for the queries, as adata.raw would keep it.
        variable = adata[:, adata.var["highly_variable"]].copy()
        sc.pp.scale(variable, max_value=10)
    with _step(steps, "pca"):
        sc.pp.pca(variable, n_comps=50, svd_solver="covariance_eigh")
        adata.obsm["X_pca"] = variable.obsm["X_pca"]
        del variable
    with _step(steps, "neighbors"):
        sc.pp.neighbors(adata, n_neighbors=15, use_rep="X_pca", random_state=0)
    with _step(steps, "louvain"):
        sc.tl.louvain(adata, flavor="igraph", directed=False, random_state=0)
    return adata


def _list_genes(adata: sc.AnnData):
    genes = adata.var[adata.var_names.str.contains(LIST_GENES_FILTER, case=False, regex=False)]
    ordered = genes.sort_values("dispersions", ascending=False, kind="stable")
    return ordered["dispersions"].iloc[:LIST_GENES_LIMIT]


def _timed(query) -> dict[str, float]:
    started = time.perf_counter()
    query()
    return {"in_process": time.perf_counter() - started}


@contextmanager
def _step(steps: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    steps[name] = time.perf_counter() - started
