import numpy as np
import pytest
import scanpy as sc
from anndata import AnnData
from sklearn.metrics import adjusted_rand_score

from worker.compute.graph import (
    cluster,
    embed_tsne,
    embed_umap,
    igraph_random_state,
    neighbour_graph,
)

# pynndescent's first call compiles for about ten seconds.
pytestmark = pytest.mark.slow


def clustered_pca(n_cells: int, seed: int = 0) -> np.ndarray:
    """Overlapping Gaussian clusters, so that the partition found depends on the seed."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=1.5, size=(6, 10))
    return (centres[rng.integers(6, size=n_cells)] + rng.normal(size=(n_cells, 10))).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def scanpy_graph() -> AnnData:
    # Above 4096 cells scanpy switches from exact neighbours to pynndescent.
    adata = AnnData(obsm={"X_pca": clustered_pca(5000)})
    sc.pp.neighbors(adata, n_neighbors=15, use_rep="X_pca")
    return adata


def test_neighbour_graph_equals_scanpy(scanpy_graph):
    connectivities, distances = neighbour_graph(scanpy_graph.obsm["X_pca"])
    for ours, theirs in [
        (connectivities, scanpy_graph.obsp["connectivities"]),
        (distances, scanpy_graph.obsp["distances"]),
    ]:
        assert ours.format == "csr" and ours.has_sorted_indices
        assert (ours != theirs).nnz == 0


# scanpy's neighbours are pynndescent's from 8192 cells (euclidean) or 4096 (other metrics);
# ours are too, without the search index scanpy's transformer builds after the graph.
@pytest.mark.parametrize(("metric", "n_cells"), [("euclidean", 9000), ("cosine", 4500)])
def test_neighbour_graph_equals_scanpy_where_it_uses_pynndescent(metric, n_cells):
    adata = AnnData(obsm={"X_pca": clustered_pca(n_cells, seed=1)})
    sc.pp.neighbors(adata, n_neighbors=15, use_rep="X_pca", metric=metric)
    connectivities, distances = neighbour_graph(adata.obsm["X_pca"], metric=metric)
    assert (connectivities != adata.obsp["connectivities"]).nnz == 0
    assert (distances != adata.obsp["distances"]).nnz == 0
    assert np.diff(distances.indptr).min() >= 15


@pytest.mark.parametrize("resolution", [0.5, 1.0, 1.5])
@pytest.mark.parametrize("random_state", [0, 1])
def test_leiden_equals_scanpy(scanpy_graph, resolution, random_state):
    labels = cluster(
        scanpy_graph.obsp["connectivities"],
        method="leiden",
        resolution=resolution,
        random_state=random_state,
    )
    sc.tl.leiden(
        scanpy_graph,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        resolution=resolution,
        random_state=random_state,
    )
    assert adjusted_rand_score(labels, scanpy_graph.obs["leiden"]) == 1


@pytest.mark.parametrize("random_state", [0, 1])
def test_louvain_equals_scanpy(scanpy_graph, random_state):
    labels = cluster(
        scanpy_graph.obsp["connectivities"], method="louvain", random_state=random_state
    )
    # scanpy's igraph flavour neither seeds igraph, nor uses the weights unless asked, nor
    # passes the resolution on: give it our generator and the weights, at resolution 1.
    with igraph_random_state(random_state):
        sc.tl.louvain(scanpy_graph, flavor="igraph", use_weights=True)
    assert adjusted_rand_score(labels, scanpy_graph.obs["louvain"]) == 1


@pytest.mark.parametrize("method", ["louvain", "leiden"])
def test_clusters_are_numbered_largest_first(scanpy_graph, method):
    connectivities = scanpy_graph.obsp["connectivities"]
    labels = cluster(connectivities, method=method, resolution=0.8)
    sizes = np.bincount(labels)
    assert np.all(np.diff(sizes) <= 0)
    assert len(sizes) > 2
    np.testing.assert_array_equal(labels, cluster(connectivities, method=method, resolution=0.8))
    assert not np.array_equal(labels, cluster(connectivities, method=method, resolution=0.3))


@pytest.fixture(scope="module")
def small_graph():
    x_pca = clustered_pca(600, seed=1)
    return x_pca, neighbour_graph(x_pca)[0]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_umap_is_scanpys_deterministic_and_reports_its_epochs(small_graph, metric):
    x_pca, _ = small_graph
    connectivities, _ = neighbour_graph(x_pca, metric=metric)
    reported = []

    embedding = embed_umap(
        connectivities,
        x_pca,
        min_dist=0.3,
        metric=metric,
        progress=lambda done, total: reported.append((done, total)),
    )

    assert embedding.shape == (600, 2) and embedding.dtype == np.float32
    reference = AnnData(obsm={"X_pca": x_pca}, obsp={"connectivities": connectivities})
    reference.uns["neighbors"] = {
        "connectivities_key": "connectivities",
        "params": {"method": "umap", "use_rep": "X_pca", "metric": metric},
    }
    sc.tl.umap(reference, min_dist=0.3, random_state=0)
    np.testing.assert_allclose(embedding, reference.obsm["X_umap"], atol=1e-5)
    np.testing.assert_array_equal(
        embedding, embed_umap(connectivities, x_pca, min_dist=0.3, metric=metric)
    )
    # 500 epochs up to 10,000 cells: at the start, then every tenth of them.
    assert reported == [(done, 500) for done in range(0, 501, 50)]


def test_tsne_is_finite_and_deterministic(small_graph):
    x_pca, _ = small_graph
    embedding = embed_tsne(x_pca, perplexity=30, learning_rate=200)
    assert embedding.shape == (600, 2) and embedding.dtype == np.float32
    assert np.isfinite(embedding).all()
    np.testing.assert_array_equal(embedding, embed_tsne(x_pca, perplexity=30, learning_rate=200))


def test_clustering_refuses_an_asymmetric_graph(scanpy_graph):
    connectivities = scanpy_graph.obsp["connectivities"].tolil()
    connectivities[0, 4000] = 0.5
    with pytest.raises(ValueError, match="not symmetric"):
        cluster(connectivities.tocsr())
