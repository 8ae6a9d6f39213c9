"""The trajectory tasks through the v2 path, on an embedding stored as GetEmbedding's result:
the principal graph lies on the cells and is a tree, and pseudotime grows along the branch
from the root; null for unselected cells and cells without coordinates."""

import gzip
import secrets

import numpy as np
import pytest
import zstandard
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.stats import spearmanr

from tests.tasks.long.conftest import CELLS_PER_SAMPLE, LONG_EXPERIMENT
from worker.jsonio import dumps
from worker.store.experiment import open_experiment
from worker.transport.aws import aws_client

N_CELLS = 4 * CELLS_PER_SAMPLE
GAP = 20.0


def embedding(rng) -> tuple[np.ndarray, list]:
    """Cells of s1 and s2 along y = 0 (x their position), of s3 and s4 along y = GAP; every
    37th cell without coordinates."""
    position = rng.uniform(0, 10, N_CELLS)
    y = np.where(np.arange(N_CELLS) < 2 * CELLS_PER_SAMPLE, 0.0, GAP)
    points = np.column_stack([position, y + rng.normal(0, 0.1, N_CELLS)])
    as_stored = [None if cell % 37 == 5 else [float(x), float(y)] for cell, (x, y) in
                 enumerate(points)]  # fmt: skip
    return position, as_stored


@pytest.fixture(scope="module")
def stored_embedding(long_settings):
    """The embedding stored as a GetEmbedding result: zstd, and a gzip copy."""
    position, as_stored = embedding(np.random.default_rng(11))
    s3 = aws_client("s3", long_settings.aws)
    etags = {}
    for name, compress in (("zstd", zstandard.ZstdCompressor().compress), ("gzip", gzip.compress)):
        etags[name] = secrets.token_hex(16)
        s3.put_object(Bucket=long_settings.v2_results_bucket, Key=etags[name],
                      Body=compress(dumps(as_stored)))  # fmt: skip
    return position, as_stored, etags


def body(name: str, etag: str, cell_sets: list[str], **extra) -> dict:
    return {"name": name, "embedding": {"ETag": etag, "method": "umap", "methodSettings":
            {"distanceMetric": "euclidean", "minimumDistance": 0.3}},
            "clustering": {"method": "louvain", "resolution": 0.8}, "cellSets": cell_sets,
            **extra}  # fmt: skip


def ask(v2, request: dict):
    message = v2.message(request, LONG_EXPERIMENT)
    v2.send(message)
    return v2.answer(message, timeout_s=240)


def as_graph(nodes: dict) -> sparse.csr_matrix:
    n = len(nodes["x"])
    assert len(nodes["y"]) == len(nodes["connectedNodes"]) == n
    edges = [(i, j) for i, higher in enumerate(nodes["connectedNodes"]) for j in higher]
    assert all(j > i for i, j in edges)
    rows, columns = zip(*edges, strict=True)
    return sparse.coo_matrix((np.ones(len(edges)), (rows, columns)), shape=(n, n)).tocsr()


def test_the_graph_is_a_tree_on_each_branch(v2, stored_embedding):
    _, _, etags = stored_embedding
    nodes = ask(v2, body("GetTrajectoryAnalysisStartingNodes", etags["zstd"], ["sample"])).result
    graph = as_graph(nodes)
    n_nodes = graph.shape[0]
    # Two partitions apart: a tree on each, nothing between them.
    n_trees, tree_of = connected_components(graph, directed=False)
    assert n_trees == 2 and graph.nnz == n_nodes - 2
    x, y = np.asarray(nodes["x"]), np.asarray(nodes["y"])
    assert (np.abs(y[tree_of == tree_of[0]]) < 1).all()
    assert (np.abs(y[tree_of != tree_of[0]] - GAP) < 1).all()
    assert (x > -0.5).all() and (x < 10.5).all()
    # Stored with gzip, as the platform's older results: the same graph.
    again = ask(v2, body("GetTrajectoryAnalysisStartingNodes", etags["gzip"], ["sample"])).result
    assert again == nodes


def test_pseudotime_grows_from_the_root_along_the_branch(v2, stored_embedding):
    position, as_stored, etags = stored_embedding
    nodes = ask(v2, body("GetTrajectoryAnalysisStartingNodes", etags["zstd"], ["sample"])).result
    on_first = np.abs(np.asarray(nodes["y"])) < 1
    root = int(np.flatnonzero(on_first)[np.argmin(np.asarray(nodes["x"])[on_first])])
    request = body("GetTrajectoryAnalysisPseudoTime", etags["zstd"],
                   ["sample-s1", "sample-s2", "sample-s3"], rootNodes=[str(root)])  # fmt: skip
    times = np.array([np.nan if t is None else t for t in ask(v2, request).result["pseudotime"]])
    assert len(times) == N_CELLS
    in_branch = np.arange(N_CELLS) < 2 * CELLS_PER_SAMPLE
    has_point = np.array([point is not None for point in as_stored])
    # Null: cells without coordinates, of the other branch (unreachable) or not selected (s4).
    assert np.isnan(times[~in_branch | ~has_point]).all()
    reached = in_branch & has_point
    assert np.isfinite(times[reached]).all()
    assert spearmanr(times[reached], position[reached]).statistic > 0.98
    # Along the branch pseudotime is a length: from the root's x to the far end.
    assert times[reached].max() == pytest.approx(position[reached].max() - nodes["x"][root], abs=1)


@pytest.mark.parametrize(
    ("roots", "code"),
    [([], "R_WORKER_TRAJECTORY_ANALYSIS_EMPTY_ROOT_NODES"), ([100_000], "INVALID_INPUT")],
)
def test_root_errors(v2, stored_embedding, roots, code):
    _, _, etags = stored_embedding
    answer = ask(v2, body("GetTrajectoryAnalysisPseudoTime", etags["zstd"], [], rootNodes=roots))
    response = answer.notification["response"]
    assert response["error"] is True and response["errorCode"] == code


def test_without_a_stored_embedding_the_umap_is_computed(v2, long_settings):
    nodes = ask(v2, body("GetTrajectoryAnalysisStartingNodes", secrets.token_hex(16), [])).result
    store = open_experiment(long_settings.store_root, LONG_EXPERIMENT, long_settings.aws)
    umap = store.cached("obsm/X_umap__euclidean__min_dist_0.3")
    assert umap is not None and umap.shape == (N_CELLS, 2)
    # Every node lies among the cells it was learnt from.
    nearest = np.min(
        np.linalg.norm(np.column_stack([nodes["x"], nodes["y"]])[:, None] - umap[None], axis=2),
        axis=1,
    )
    assert nearest.max() < 0.1 * np.ptp(umap, axis=0).max()
