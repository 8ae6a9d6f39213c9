"""GetTrajectoryAnalysisStartingNodes and GetTrajectoryAnalysisPseudoTime (Cellenics v2): a
principal graph through the selected cells' UMAP as monocle3's learn_graph makes it (its
nodes, which the browser offers as roots), and each cell's pseudotime along it from the roots
chosen. The two tasks learn the same graph from the same body (seeded), so node indices agree."""

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker.compute.trajectory import PrincipalGraph, learn_graph, pseudotime
from worker.errors import EmptyCellSet, EmptyRootNodes, InvalidRequest
from worker.jsonio import loads
from worker.store.experiment import ExperimentStore
from worker.store.result_file import read_result
from worker.tasks.base import Task, TaskContext, V2TaskBody
from worker.tasks.dispatch import invalid_request
from worker.tasks.embeddings import UmapV2Config, cached_embedding

ETAG_PATTERN = r"^[A-Fa-f0-9]{1,128}$"
STEPS = 3


class EmbeddingSettings(BaseModel):
    """The experiment's embedding: the platform's API puts the ETag of its GetEmbedding request
    in `ETag`; `methodSettings` say how to compute it when that result is not stored."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    ETag: str | None = Field(default=None, pattern=ETAG_PATTERN)
    method: str = "umap"
    methodSettings: dict[str, Any] = Field(default_factory=dict)


class ClusteringSettings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    method: Literal["louvain", "leiden"] = "louvain"
    resolution: float | None = None


class TrajectoryBody(V2TaskBody):
    embedding: EmbeddingSettings
    clustering: ClusteringSettings
    # Keys of cell sets (a class: its children); none, every cell with coordinates.
    cellSets: list[str] = Field(default_factory=list, max_length=10_000)


class StartingNodesBody(TrajectoryBody):
    name: Literal["GetTrajectoryAnalysisStartingNodes"]


class PseudoTimeBody(TrajectoryBody):
    name: Literal["GetTrajectoryAnalysisPseudoTime"]
    # Node indices; the browser sends integers where the platform's schema says strings.
    rootNodes: list[int] = Field(max_length=100_000)


def stored_embedding(context: TaskContext, etag: str | None, n_cells: int) -> np.ndarray | None:
    """The coordinates of the GetEmbedding result stored under `etag` (NaN where null)."""
    if etag is None or not context.v2_results_bucket:
        return None
    stored = read_result(context.aws, context.v2_results_bucket, etag)
    if stored is None:
        return None
    coordinates = np.full((n_cells, 2), np.nan)
    for cell, point in enumerate(loads(stored)[:n_cells]):
        if point is not None:
            coordinates[cell] = point[:2]
    return coordinates


def computed_umap(
    context: TaskContext, store: ExperimentStore, method_settings: dict
) -> np.ndarray:
    """The UMAP `methodSettings` describe, as GetEmbedding computes and caches it."""
    try:
        config = UmapV2Config.model_validate(method_settings)
    except ValidationError as error:
        raise invalid_request(error, prefix="body.embedding.methodSettings") from None
    return cached_embedding(context, store, "umap", config)


def trajectory_graph(
    context: TaskContext, body: TrajectoryBody
) -> tuple[np.ndarray, np.ndarray, PrincipalGraph]:
    """The selected cells (ids), their coordinates and the principal graph through them."""
    context.report_progress(0, STEPS, "Reading the embedding")
    store = context.store()
    coordinates = stored_embedding(context, body.embedding.ETag, store.n_cells)
    if coordinates is None:
        coordinates = computed_umap(context, store, body.embedding.methodSettings)
    selected = np.isfinite(coordinates).all(axis=1)
    if body.cellSets:
        selected &= context.cell_sets().union_mask(body.cellSets, store.n_cells)
    cells = np.flatnonzero(selected)
    if len(cells) < 3:
        raise EmptyCellSet("The selected cell sets hold fewer than 3 cells with coordinates.")
    context.report_progress(1, STEPS, "Learning the principal graph")
    graph = learn_graph(
        coordinates[cells], method=body.clustering.method, resolution=body.clustering.resolution
    )
    return cells, coordinates[cells], graph


def starting_nodes(context: TaskContext, body: StartingNodesBody) -> dict:
    _, _, graph = trajectory_graph(context, body)
    context.report_progress(STEPS, STEPS, "Principal graph learnt")
    return {"connectedNodes": graph.neighbours(), "x": graph.nodes[:, 0], "y": graph.nodes[:, 1]}


def pseudo_time(context: TaskContext, body: PseudoTimeBody) -> dict:
    if not body.rootNodes:
        raise EmptyRootNodes("No root nodes were selected for the analysis.")
    cells, points, graph = trajectory_graph(context, body)
    outside = [node for node in body.rootNodes if not 0 <= node < len(graph.nodes)]
    if outside:
        raise InvalidRequest(
            f"invalid request: body.rootNodes: {outside[:5]} are not nodes of the graph "
            f"(0 to {len(graph.nodes) - 1})"
        )
    context.report_progress(2, STEPS, "Ordering the cells")
    times = np.full(context.store().n_cells, np.nan)
    times[cells] = pseudotime(graph, points, sorted(set(body.rootNodes)))
    # Unselected and unreachable cells are null.
    times[~np.isfinite(times)] = np.nan
    return {"pseudotime": times}


STARTING_NODES_TASK = Task(
    name="GetTrajectoryAnalysisStartingNodes",
    body=StartingNodesBody,
    cacheable=True,
    compute=starting_nodes,
)
PSEUDO_TIME_TASK = Task(
    name="GetTrajectoryAnalysisPseudoTime",
    body=PseudoTimeBody,
    cacheable=True,
    compute=pseudo_time,
)
