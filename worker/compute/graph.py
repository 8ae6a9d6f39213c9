"""Neighbour graph, clustering and embeddings of the cells, from the in-memory PCA.

The PCA fits in memory (1M cells x 50 float32 is 200 MB), so these run scanpy, igraph,
umap-learn and openTSNE directly on it. scanpy, igraph (which loads matplotlib) and openTSNE
are imported where they are used: the queue process imports this module through the task
registry, and without them it stays a fraction of the size (DESIGN: idle worker under 300 MB).
"""

import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
    transformer = _graph_only_nndescent(len(x_pca), n_neighbors, metric, random_state)
    if transformer is None:
        connectivities, distances = _scanpy_exact_graph(x_pca, n_neighbors, metric, random_state)
    else:
        # What sc.pp.neighbors does with this transformer, without its copies (below).
        distances = transformer.fit_transform(x_pca)
        connectivities = _umap_connectivities(distances, n_neighbors)
    connectivities.sort_indices()
    distances.sort_indices()
    return connectivities, distances


def _scanpy_exact_graph(
    x_pca: np.ndarray, n_neighbors: int, metric: str, random_state: int
) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    import scanpy as sc

    adata = AnnData(obsm={"X_pca": x_pca})
    sc.pp.neighbors(
        adata, n_neighbors=n_neighbors, use_rep="X_pca", metric=metric, random_state=random_state
    )
    return (
        sparse.csr_matrix(adata.obsp["connectivities"]),
        sparse.csr_matrix(adata.obsp["distances"]),
    )


def _umap_connectivities(distances: sparse.csr_matrix, n_neighbors: int) -> sparse.csr_matrix:
    """scanpy's connectivities of a distance graph (umap-learn's `fuzzy_simplicial_set`),
    the same values, holding about half as much at their peak.

    umap-learn takes the fuzzy union `A + Aᵀ - A∘Aᵀ` in one expression over COO matrices, each
    operand converted to CSR again, all of them alive to its end (0.9 GB beyond its inputs for
    a million cells' 15 neighbours). Here each is converted once and dropped as soon as it is
    used (0.5 GB); scanpy's connected components, which nothing reads, are not computed.
    """
    from scanpy.neighbors._common import _get_indices_distances_from_sparse_matrix
    from umap.umap_ import compute_membership_strengths, smooth_knn_dist

    n_cells = distances.shape[0]
    knn_indices, knn_distances = _get_indices_distances_from_sparse_matrix(distances, n_neighbors)
    knn_distances = knn_distances.astype(np.float32)
    sigmas, rhos = smooth_knn_dist(knn_distances, float(n_neighbors), local_connectivity=1.0)
    rows, cols, strengths, _ = compute_membership_strengths(
        knn_indices, knn_distances, sigmas, rhos
    )
    del knn_indices, knn_distances
    memberships = sparse.coo_matrix((strengths, (rows, cols)), shape=(n_cells, n_cells))
    del rows, cols, strengths
    memberships.eliminate_zeros()
    forward = memberships.tocsr()
    del memberships
    backward = forward.transpose().tocsr()
    both_ways = forward.multiply(backward)
    union = forward + backward
    del forward, backward
    # umap-learn then adds 0 x both_ways (its mix ratio is 1): no value changes.
    union = union - both_ways
    del both_ways
    union.eliminate_zeros()
    return union


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
    from scipy.sparse import coo_matrix

    # scanpy's own rule (neighbors/_handle_transformer): below it, exact neighbours.
    if n_cells < 4096 or (metric == "euclidean" and n_cells < 8192):
        return None

    class GraphOnlyNNDescent(PyNNDescentTransformer):
        def fit_transform(self, X, y=None, **fit_params):
            # What fit (with sklearn's count of neighbours, which leaves each point out) then
            # transform(None) give.
            indices, distances = _nndescent_neighbours(
                X,
                n_neighbors=self.n_neighbors + 1,
                metric=self.metric,
                random_state=self.random_state,
                n_trees=self.n_trees,
                n_iters=self.n_iters,
                n_jobs=self.n_jobs,
            )
            graph = coo_matrix((len(X), len(X)), dtype=np.float32)
            graph.row = np.repeat(np.arange(len(X), dtype=np.int32), indices.shape[1])
            graph.col = indices.ravel()
            graph.data = distances.ravel()
            return graph.tocsr()

    return GraphOnlyNNDescent(
        n_neighbors=n_neighbors,
        metric=metric,
        metric_kwds={},
        random_state=random_state,
        n_jobs=sc.settings.n_jobs,
        n_trees=min(64, 5 + round(n_cells**0.5 / 20.0)),
        n_iters=max(5, round(np.log2(n_cells))),
    )


def _nndescent_neighbours(
    data: np.ndarray,
    *,
    n_neighbors: int,
    metric: str,
    random_state: int,
    n_trees: int,
    n_iters: int,
    n_jobs: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """`pynndescent.NNDescent(data, ...).neighbor_graph` with the given settings (and the
    rest at their defaults) for a dense `data` and a metric of pynndescent's fast
    alternatives, computed step by step as its constructor does, in the same order of
    random draws, but holding less: each random projection tree is cut into its leaves and
    dropped as soon as it is built (the constructor keeps all of them to the end: a GB at a
    million cells), and the leaves go before the descent iterates.
    """
    import numba
    from pynndescent import distances as pynnd_distances
    from pynndescent import pynndescent_ as nnd
    from pynndescent import rp_trees
    from pynndescent.utils import deheap_sort, make_heap
    from sklearn.utils import check_array, check_random_state

    alternative = pynnd_distances.fast_distance_alternatives.get(metric)
    if alternative is None or metric not in ("euclidean", "cosine"):
        raise ValueError(f"unsupported metric {metric!r}")
    distance, correction = alternative["dist"], alternative["correction"]
    data = check_array(data, dtype=np.float32, order="C")
    generator = check_random_state(random_state)
    rng_state = generator.randint(nnd.INT32_MIN, nnd.INT32_MAX, 3).astype(np.int64)
    generator.randint(nnd.INT32_MIN, nnd.INT32_MAX, 3)  # the search's, which we never run

    # rp_trees.make_forest, a tree at a time: only its leaves are kept.
    leaf_size = max(60, min(256, 5 * np.int32(n_neighbors)))
    tree_states = generator.randint(
        rp_trees.INT32_MIN, rp_trees.INT32_MAX, size=(n_trees, 3)
    ).astype(np.int64)
    tree_leaves = []
    for tree_state in tree_states:
        tree = rp_trees.make_dense_tree(
            data, tree_state, leaf_size, metric == "cosine", max_depth=200
        )
        leaves = rp_trees.get_leaves_from_tree(tree, tree.leaf_size)
        del tree
        sizes = (leaves >= 0).sum(axis=1)
        tree_leaves.append((sizes, leaves[leaves >= 0]))
        del leaves
    # rp_trees.rptree_leaf_array: every tree's leaves, as wide as the widest.
    width = max(int(sizes.max()) for sizes, _ in tree_leaves)
    leaf_array = np.full((sum(len(sizes) for sizes, _ in tree_leaves), width), -1, np.int32)
    row = 0
    for sizes, points in tree_leaves:
        mask = np.arange(width) < sizes[:, None]
        leaf_array[row : row + len(sizes)][mask] = points
        row += len(sizes)
    del tree_leaves

    # pynndescent_.nn_descent, with the leaves dropped once they have seeded the graph.
    threads = numba.get_num_threads()
    if n_jobs not in (-1, None):
        numba.set_num_threads(n_jobs)
    try:
        graph = make_heap(data.shape[0], n_neighbors)
        nnd.init_rp_tree(data, distance, graph, leaf_array)
        del leaf_array
        nnd.init_random(n_neighbors, data, graph, distance, rng_state)
        nnd.nn_descent_internal(
            graph,
            data,
            n_neighbors,
            rng_state,
            max_candidates=min(60, n_neighbors),
            dist=distance,
            n_iters=n_iters,
            delta=0.001,
        )
        indices, distances = deheap_sort(graph[0], graph[1])
    finally:
        numba.set_num_threads(threads)
    return indices, correction(distances)


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


@dataclass(frozen=True)
class PairEdges:
    """A symmetric graph as one undirected edge per pair of vertices (and per loop), in the
    order of its stored entries, row by row."""

    n_vertices: int
    edges: np.ndarray  # (n_edges, 2) int32, each (i, j) with i <= j
    weights: np.ndarray  # float64

    @classmethod
    def of(cls, connectivities: sparse.csr_matrix) -> "PairEdges":
        """scanpy gives igraph one edge per stored entry, so each pair twice, each time with
        the pair's weight; here each pair is one edge of twice that weight. Modularity is the
        same function of the partition, and Louvain and Leiden find the same partition
        (tests/compute/test_graph.py against scanpy; every case tried from 5,000 to 100,000
        cells, both methods and two seeds, gave the same labels) with half the edges: half
        the memory, and 100,000 cells in 5.1 instead of 9.4 s."""
        connectivities = sparse.csr_matrix(connectivities)
        rows = np.repeat(
            np.arange(connectivities.shape[0], dtype=np.int32), np.diff(connectivities.indptr)
        )
        columns = connectivities.indices
        stored = connectivities.data != 0
        if np.count_nonzero(stored & (rows < columns)) != np.count_nonzero(
            stored & (rows > columns)
        ):
            raise ValueError("the connectivities are not symmetric")
        kept = stored & (rows <= columns)
        weights = connectivities.data[kept].astype(np.float64)
        weights[rows[kept] != columns[kept]] *= 2
        return cls(connectivities.shape[0], np.column_stack((rows[kept], columns[kept])), weights)


def cluster(
    connectivities: sparse.csr_matrix | PairEdges,
    *,
    method: ClusterMethod = "louvain",
    resolution: float = 1.0,
    random_state: int = 0,
) -> np.ndarray:
    """Cluster label of each cell, as scanpy's igraph flavour finds it (seeded as its
    leiden is); cluster 0 is the largest, ties broken by first member."""
    import igraph

    pairs = (
        connectivities if isinstance(connectivities, PairEdges) else PairEdges.of(connectivities)
    )
    # Given an array, igraph first makes one Python list of all its pairs (1.2 GB and 8 s for
    # the 7M edges of a million cells); from an iterator it takes them one at a time.
    graph = igraph.Graph(n=pairs.n_vertices, edges=iter(pairs.edges), directed=False)
    with igraph_random_state(random_state):
        if method == "louvain":
            partition = graph.community_multilevel(weights=pairs.weights, resolution=resolution)
        elif method == "leiden":
            partition = graph.community_leiden(
                objective_function="modularity",
                weights=pairs.weights,
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


# A UMAP reports the epochs it has run this many times (and at its start).
UMAP_PROGRESS_STEPS = 10


def embed_umap(
    connectivities: sparse.csr_matrix,
    x_pca: np.ndarray,
    *,
    min_dist: float = 0.3,
    metric: str = "euclidean",
    random_state: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """UMAP coordinates (n x 2, float32) of the given graph, as `sc.tl.umap` computes them;
    `progress(done, total)` is called with the epochs run, UMAP_PROGRESS_STEPS times.

    The call is `sc.tl.umap`'s own (its defaults: spread 1, spectral initialisation, 500 epochs
    up to 10,000 cells and 200 beyond), made here because scanpy gives umap-learn's epoch loop
    no progress bar to report from: its tqdm bar is written, one `done/total` at a time, to a
    file that passes them on. `metric` must be the one the graph was built with; umap uses it
    (with `x_pca`) only to lay out disconnected components.
    """
    from sklearn.utils import check_random_state
    from umap.umap_ import find_ab_params, simplicial_set_embedding

    a, b = find_ab_params(1.0, min_dist)
    n_epochs = 500 if connectivities.shape[0] <= 10_000 else 200
    bar = {"disable": True}
    if progress is not None:
        bar = {
            "disable": False,
            "file": _EpochsFile(progress),
            "bar_format": "{n}/{total}",
            "miniters": max(1, n_epochs // UMAP_PROGRESS_STEPS),
            # Counted in epochs only: no time-based refresh of the bar.
            "mininterval": 0,
            "maxinterval": float("inf"),
            "leave": False,
        }
    embedding, _ = simplicial_set_embedding(
        data=x_pca,
        graph=connectivities.tocoo(),
        n_components=2,
        initial_alpha=1.0,
        a=a,
        b=b,
        gamma=1.0,
        negative_sample_rate=5,
        n_epochs=n_epochs,
        init="spectral",
        random_state=check_random_state(random_state),
        metric=metric,
        metric_kwds={},
        densmap=False,
        densmap_kwds={},
        output_dens=False,
        verbose=False,
        tqdm_kwds=bar,
    )
    return embedding.astype(np.float32)


class _EpochsFile:
    """The file of a tqdm bar formatted `{n}/{total}`: each new count goes to `progress`."""

    def __init__(self, progress: Callable[[int, int], None]):
        self._progress = progress
        self._last: tuple[int, int] | None = None

    def write(self, text: str) -> None:
        for done, total in re.findall(r"(\d+)/(\d+)", text):
            count = (int(done), int(total))
            if count != self._last:
                self._last = count
                self._progress(*count)

    def flush(self) -> None:
        pass


# openTSNE's iterations (its defaults: early exaggeration, then the rest), and how often it
# calls back.
TSNE_ITERATIONS = 250 + 500
TSNE_CALLBACK_EVERY = 50
# openTSNE's threads. A fixed number, not the machine's: its embedding differs with the number
# of threads (it is the same for the same number). Two took 176 s for 100,000 cells of the
# large tier against 301 s with one (the affinities 79 against 95 s, the 750 iterations 97
# against 206 s; both with a Scrublet run beside them on the 2 cores).
TSNE_THREADS = 2


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
        n_jobs=TSNE_THREADS,
        callbacks=None if progress is None else iterated,
        callbacks_every_iters=TSNE_CALLBACK_EVERY,
    ).fit(x_pca)
    return np.asarray(embedding, dtype=np.float32)
