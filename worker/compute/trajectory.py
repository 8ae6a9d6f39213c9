"""A principal graph through the cells of a 2-d embedding, as monocle3's `learn_graph` makes it
(its SimplePPT, `calc_principal_graph`, on centres from k-means), and pseudotime along it.

Partitions are the connected components of the cells' k-nearest-neighbour graph (monocle
joins clusters by a test of their links, which joins what the graph joins and may keep apart
clusters that touch); each partition gets its own tree. Left out of monocle's pipeline: loop
closure and the pruning of short side branches.
"""

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import dijkstra, minimum_spanning_tree
from scipy.spatial.distance import cdist

# monocle3's defaults: cluster_cells(k = 25), learn_graph's SimplePPT (maxiter 10, eps 1e-5,
# L1.gamma 0.5, L1.sigma 0.01) and its number of centres per cluster.
NEIGHBOURS = 25
MAX_ITERATIONS = 10
EPSILON = 1e-5
GAMMA = 0.5
SIGMA = 0.01
CENTRES_PER_CLUSTER = 15
# Points per block where a points x centres matrix is needed (at 500 centres, 200 MB).
BLOCK_POINTS = 50_000
SEED = 42
# Ours: every cell's soft assignment to every centre is held (cells x centres), so they are
# bounded (monocle's rule gives some 1500 centres for 16 clusters of a million cells).
MAX_CENTRES = 500


@dataclass(frozen=True)
class PrincipalGraph:
    nodes: np.ndarray  # K x 2 coordinates
    edges: np.ndarray  # E x 2 node indices, each edge once (i < j)

    def neighbours(self) -> list[list[int]]:
        """Each node's neighbours of higher index, ascending (the platform's connectedNodes)."""
        higher: list[list[int]] = [[] for _ in range(len(self.nodes))]
        for i, j in sorted(map(tuple, self.edges)):
            higher[i].append(int(j))
        return higher


def knn_clusters(
    points: np.ndarray, *, method: str, resolution: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """monocle3's cluster_cells on the embedding: a k-nearest-neighbour graph (k 25, unweighted)
    clustered by Louvain or Leiden (igraph), seeded; and the graph's connected components (the
    partitions)."""
    import igraph
    from sklearn.neighbors import NearestNeighbors

    from worker.compute.graph import igraph_random_state

    k = min(NEIGHBOURS, len(points) - 2)
    if k < 1:
        return np.zeros(len(points), dtype=np.int64), np.zeros(len(points), dtype=np.int64)
    _, neighbours = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
    sources = np.repeat(np.arange(len(points)), k)
    # An iterator, as in worker.compute.graph.cluster: igraph lists an array's pairs all at once.
    edges = np.column_stack([sources, neighbours[:, 1:].ravel()])
    graph = igraph.Graph(n=len(points), edges=iter(edges), directed=False)
    with igraph_random_state(SEED):
        if method == "leiden":
            partition = graph.community_leiden(
                objective_function="CPM", resolution=resolution or 1.0, n_iterations=2
            )
        else:
            partition = graph.community_multilevel()
    components = np.asarray(graph.connected_components().membership)
    return np.asarray(partition.membership), components


def simple_ppt(
    points: np.ndarray, centres: np.ndarray, *, gamma: float = GAMMA, sigma: float = SIGMA
) -> tuple[np.ndarray, sparse.csr_matrix]:
    """monocle3's calc_principal_graph: the centres moved to a smooth tree through the points,
    and the tree (the minimum spanning tree of the centres' squared distances)."""
    objective = None
    tree = None
    for _iteration in range(MAX_ITERATIONS):
        tree = minimum_spanning_tree(cdist(centres, centres, "sqeuclidean"))
        tree = ((tree + tree.T) > 0).astype(np.float64)
        totals, weighted, log_term = soft_assignment_sums(points, centres, sigma)
        spanning = cdist(centres, centres, "sqeuclidean")[tree.nonzero()].sum()
        new_objective = spanning + gamma * -sigma * log_term
        if objective is not None and abs(new_objective - objective) / abs(objective) < EPSILON:
            break
        objective = new_objective
        degree = np.asarray(tree.sum(axis=1)).ravel()
        laplacian = np.diag(degree) - tree.toarray()
        system = 2 * laplacian + gamma * np.diag(totals)
        centres = np.linalg.solve(system.T, (gamma * weighted).T)
    return centres, sparse.csr_matrix(tree)


def soft_assignment_sums(
    points: np.ndarray, centres: np.ndarray, sigma: float, block_points: int = BLOCK_POINTS
) -> tuple[np.ndarray, np.ndarray, float]:
    """What SimplePPT needs of every point's soft assignment to the centres, summed a block of
    points at a time (whole, the points x centres matrices took 18 GB at a million cells): each
    centre's total assignment, the points weighted by it (dimensions x centres), and the sum
    over points of log(row sum) - row minimum / sigma."""
    totals = np.zeros(len(centres))
    weighted = np.zeros((points.shape[1], len(centres)))
    log_term = 0.0
    for start in range(0, len(points), block_points):
        block = points[start : start + block_points]
        weights = cdist(block, centres, "sqeuclidean")
        row_min = weights.min(axis=1, keepdims=True)
        weights -= row_min
        np.divide(weights, -sigma, out=weights)
        np.exp(weights, out=weights)
        row_sums = weights.sum(axis=1, keepdims=True)
        weights /= row_sums
        totals += weights.sum(axis=0)
        weighted += block.T @ weights
        log_term += float(np.sum(np.log(row_sums) - row_min / sigma))
    return totals, weighted, log_term


def learn_graph(
    points: np.ndarray, *, method: str = "louvain", resolution: float | None = None
) -> PrincipalGraph:
    """The principal graph of the embedded points (n x 2): a tree per partition, nodes
    numbered partition by partition (in the order partitions first appear among the points)."""
    points = np.asarray(points, dtype=np.float64)
    clusters, partitions = knn_clusters(points, method=method, resolution=resolution)
    _, first = np.unique(partitions, return_index=True)
    nodes, edges = [], []
    n_nodes = 0
    for partition in partitions[np.sort(first)]:
        members = partitions == partition
        tree_nodes, tree_edges = _partition_tree(points[members], len(np.unique(clusters[members])))
        nodes.append(tree_nodes)
        edges.append(tree_edges + n_nodes)
        n_nodes += len(tree_nodes)
    return PrincipalGraph(np.concatenate(nodes), np.concatenate(edges).astype(np.int64))


def _partition_tree(points: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """One partition's nodes and edges: SimplePPT on the densest cell of each k-means cluster
    (monocle's medoids), the k-means started at evenly spaced cells."""
    from sklearn.cluster import KMeans
    from sklearn.neighbors import NearestNeighbors

    n = len(points)
    if n < 3:
        return points.mean(axis=0, keepdims=True), np.zeros((0, 2), dtype=np.int64)
    n_centres = round(n_clusters * CENTRES_PER_CLUSTER * np.log10(n))
    n_centres = max(2, min(n_centres, n - 1, MAX_CENTRES))
    starts = points[np.round(np.linspace(0, n - 1, n_centres)).astype(int)]
    labels = KMeans(n_centres, init=starts, n_init=1, max_iter=100).fit(points).labels_
    k = min(NEIGHBOURS, n - 1)
    distances, _ = NearestNeighbors(n_neighbors=k).fit(points).kneighbors(points)
    density = np.exp(-distances[:, 1:].mean(axis=1))
    medoids = np.array(
        [np.flatnonzero(labels == c)[np.argmax(density[labels == c])] for c in np.unique(labels)]
    )
    nodes, tree = simple_ppt(points, points[medoids])
    upper = sparse.triu(tree, k=1).tocoo()
    return nodes, np.column_stack([upper.row, upper.col])


def pseudotime(graph: PrincipalGraph, points: np.ndarray, roots: list[int]) -> np.ndarray:
    """Each point's distance along the graph from the nearest root node: the point projected on
    the nearest segment from its nearest node to one of that node's neighbours, then the
    shortest path of Euclidean edge lengths; inf where no root is reached."""
    nodes = graph.nodes
    n_nodes = len(nodes)
    lengths = np.linalg.norm(nodes[graph.edges[:, 0]] - nodes[graph.edges[:, 1]], axis=1)
    adjacency = sparse.coo_matrix(
        (lengths, (graph.edges[:, 0], graph.edges[:, 1])), shape=(n_nodes, n_nodes)
    ).tocsr()
    from_roots = dijkstra(adjacency, directed=False, indices=roots, min_only=True)
    nearest = np.concatenate(
        [
            cdist(points[start : start + BLOCK_POINTS], nodes).argmin(axis=1)
            for start in range(0, len(points), BLOCK_POINTS)
        ]
    )
    neighbours_of = [[] for _ in range(n_nodes)]
    for i, j in graph.edges:
        neighbours_of[i].append(j)
        neighbours_of[j].append(i)
    times = np.full(len(points), np.inf)
    for cell, (point, node) in enumerate(zip(points, nearest, strict=True)):
        best = (np.inf, from_roots[node])
        for other in neighbours_of[node]:
            segment = nodes[other] - nodes[node]
            along = np.clip(np.dot(point - nodes[node], segment) / np.dot(segment, segment), 0, 1)
            projected = nodes[node] + along * segment
            gap = np.linalg.norm(point - projected)
            time = min(
                from_roots[node] + along * lengths_between(nodes, node, other),
                from_roots[other] + (1 - along) * lengths_between(nodes, node, other),
            )
            if gap < best[0]:
                best = (gap, time)
        times[cell] = best[1]
    return times


def lengths_between(nodes: np.ndarray, a: int, b: int) -> float:
    return float(np.linalg.norm(nodes[a] - nodes[b]))
