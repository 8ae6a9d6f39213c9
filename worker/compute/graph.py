"""Neighbour graph, clustering and embeddings of the cells, from the in-memory PCA.

The PCA fits in memory (1M cells x 50 float32 is 200 MB), so these run scanpy, igraph,
umap-learn and openTSNE directly on it. scanpy, igraph (which loads matplotlib) and openTSNE
are imported where they are used: the queue process imports this module through the task
registry, and without them it stays a fraction of the size (DESIGN: idle worker under 300 MB).
"""

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
from anndata import AnnData
from scipy import sparse

ClusterMethod = Literal["louvain", "leiden"]
# Fewer cells get no neighbour graph: their clustering is one cluster of all cells, and UMAP,
# t-SNE and Scrublet (30 principal components) need at least this many.
MIN_CELLS_FOR_GRAPH = 30


def neighbour_graph(
    x_pca: np.ndarray,
    *,
    n_neighbors: int = 15,
    metric: str = "euclidean",
    random_state: int = 0,
) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """`(connectivities, distances)` of `sc.pp.neighbors(use_rep="X_pca")`, indices sorted."""
    import scanpy as sc

    n_cells = len(x_pca)
    adata = AnnData(obsm={"X_pca": x_pca})
    sc.pp.neighbors(
        adata,
        n_neighbors=n_neighbors,
        use_rep="X_pca",
        metric=metric,
        random_state=random_state,
        transformer=_graph_only_nndescent(n_cells, n_neighbors, metric, random_state),
    )
    connectivities = sparse.csr_matrix(adata.obsp["connectivities"])
    distances = sparse.csr_matrix(adata.obsp["distances"])
    connectivities.sort_indices()
    distances.sort_indices()
    return connectivities, distances


def _graph_only_nndescent(n_cells: int, n_neighbors: int, metric: str, random_state: int):
    """The transformer scanpy itself would use, but that keeps no search index: None where
    scanpy computes exact neighbours (few cells), else pynndescent with scanpy's own settings.

    scanpy's default pynndescent transformer builds a search index after the graph (pynndescent
    `compress_index`, for later queries) and keeps its trees until the connectivities are done:
    at a million cells that is minutes and some 2 GB of memory for nothing read. The graph is
    the same (tests/compute/test_graph.py compares it with scanpy's).
    """
    import scanpy as sc
    from pynndescent import PyNNDescentTransformer

    # scanpy's own rule (neighbors/_handle_transformer): below it, exact neighbours.
    if n_cells < 4096 or (metric == "euclidean" and n_cells < 8192):
        return None

    class GraphOnlyNNDescent(PyNNDescentTransformer):
        def fit_transform(self, X, y=None, **fit_params):
            self.fit(X, compress_index=False)
            graph = self.transform(X=None)
            del self.index_
            return graph

    return GraphOnlyNNDescent(
        n_neighbors=n_neighbors,
        metric=metric,
        metric_kwds={},
        random_state=random_state,
        n_jobs=sc.settings.n_jobs,
        n_trees=min(64, 5 + round(n_cells**0.5 / 20.0)),
        n_iters=max(5, round(np.log2(n_cells))),
    )


class _IgraphRandom:
    """igraph's random-number interface over a seeded numpy RandomState, the one scanpy's
    leiden installs, so a seed gives scanpy's partition."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.RandomState(seed)

    def getrandbits(self, k: int) -> int:
        return self._rng.tomaxint() & ((1 << k) - 1)

    def randint(self, a: int, b: int) -> int:
        return self._rng.randint(a, b + 1)

    def random(self) -> float:
        return self._rng.random()

    def gauss(self, mu: float, sigma: float) -> float:
        return self._rng.normal(mu, sigma)


@contextmanager
def igraph_random_state(seed: int) -> Iterator[None]:
    """Seed igraph's process-wide generator for the block, then give it back Python's."""
    import igraph

    igraph.set_random_number_generator(_IgraphRandom(seed))
    try:
        yield
    finally:
        igraph.set_random_number_generator(random)


def cluster(
    connectivities: sparse.csr_matrix,
    *,
    method: ClusterMethod = "louvain",
    resolution: float = 1.0,
    random_state: int = 0,
) -> np.ndarray:
    """Cluster label of each cell; cluster 0 is the largest, ties broken by first member."""
    import igraph

    # Built as scanpy builds it: one undirected edge per stored entry, so each pair appears
    # twice; the edge order matters to the partition found.
    entries = sparse.coo_matrix(connectivities)
    stored = entries.data != 0
    edges = np.column_stack((entries.row[stored], entries.col[stored]))
    weights = entries.data[stored].astype(np.float64)
    # Freed before igraph builds its graph (a GB at a million cells), not after.
    del entries, stored
    graph = igraph.Graph(n=connectivities.shape[0], edges=edges, directed=False)
    del edges
    with igraph_random_state(random_state):
        if method == "louvain":
            partition = graph.community_multilevel(weights=weights, resolution=resolution)
        elif method == "leiden":
            partition = graph.community_leiden(
                objective_function="modularity",
                weights=weights,
                resolution=resolution,
                n_iterations=2,
            )
        else:
            raise ValueError(f"unknown clustering method {method!r}")
    return _largest_first(np.asarray(partition.membership))


def _largest_first(membership: np.ndarray) -> np.ndarray:
    labels, first_member, sizes = np.unique(membership, return_index=True, return_counts=True)
    order = np.lexsort((first_member, -sizes))
    new_label = np.empty(len(labels), dtype=np.int64)
    new_label[order] = np.arange(len(labels))
    return new_label[np.searchsorted(labels, membership)]


def embed_umap(
    connectivities: sparse.csr_matrix,
    x_pca: np.ndarray,
    *,
    min_dist: float = 0.3,
    metric: str = "euclidean",
    random_state: int = 0,
) -> np.ndarray:
    """UMAP coordinates (n x 2, float32) by `sc.tl.umap` on the given graph.

    `metric` must be the one the graph was built with; umap uses it (with `x_pca`) only to lay
    out disconnected components.
    """
    import scanpy as sc

    adata = AnnData(obsm={"X_pca": x_pca}, obsp={"connectivities": connectivities})
    adata.uns["neighbors"] = {
        "connectivities_key": "connectivities",
        "params": {"method": "umap", "use_rep": "X_pca", "metric": metric},
    }
    sc.tl.umap(adata, min_dist=min_dist, random_state=random_state)
    return adata.obsm["X_umap"].astype(np.float32)


# openTSNE's iterations (its defaults: early exaggeration, then the rest), and how often it
# calls back.
TSNE_ITERATIONS = 250 + 500
TSNE_CALLBACK_EVERY = 50


def embed_tsne(
    x_pca: np.ndarray,
    *,
    perplexity: float = 30,
    learning_rate: float = 200,
    random_state: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """t-SNE coordinates (n x 2, float32) by openTSNE; `progress(done, total)` is called with
    the iterations done every TSNE_CALLBACK_EVERY iterations."""
    from openTSNE import TSNE

    done = 0

    def iterated(iteration: int, error: float, embedding: np.ndarray) -> bool:
        nonlocal done
        done = min(done + TSNE_CALLBACK_EVERY, TSNE_ITERATIONS)
        progress(done, TSNE_ITERATIONS)
        return False  # go on

    embedding = TSNE(
        perplexity=perplexity,
        learning_rate=learning_rate,
        random_state=random_state,
        callbacks=None if progress is None else iterated,
        callbacks_every_iters=TSNE_CALLBACK_EVERY,
    ).fit(x_pca)
    return np.asarray(embedding, dtype=np.float32)
