"""Embedding configs and their cache in the store: what GetEmbedding computes (and the
trajectory tasks, which lay their graph on the same UMAP) from the stored PCA, once per config."""

from collections.abc import Callable
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import sparse

from worker.compute.graph import MIN_CELLS_FOR_GRAPH, embed_tsne, embed_umap, neighbour_graph
from worker.errors import InvalidRequest
from worker.store.experiment import ExperimentStore
from worker.tasks.base import TaskContext

# `report(done, total, message)`: how far a computation is (TaskContext.report_progress).
Report = Callable[[int, int, str], None]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True, frozen=True)


class UmapConfig(_Config):
    # umap-learn needs min_dist <= spread, which scanpy leaves at 1.
    minimumDistance: float = Field(default=0.3, ge=0, le=1)
    distanceMetric: Literal["euclidean", "cosine"] = "euclidean"

    def element_name(self) -> str:
        return f"X_umap__{self.distanceMetric}__min_dist_{self.minimumDistance!r}"

    def neighbours(
        self, store: ExperimentStore, x_pca: np.ndarray, report: Report
    ) -> sparse.csr_matrix:
        """The graph the UMAP lays out: the stored one for euclidean, else one made in the
        metric with the store's number of neighbours."""
        parameters = store.parameters
        if self.distanceMetric == "euclidean":
            return store.connectivities()
        report(0, 1, "Finding neighbours")
        connectivities, _ = neighbour_graph(
            x_pca,
            n_neighbors=parameters.n_neighbors,
            metric="cosine",
            random_state=parameters.random_state,
        )
        return connectivities

    def embed(self, store: ExperimentStore, x_pca: np.ndarray, report: Report) -> np.ndarray:
        connectivities = self.neighbours(store, x_pca, report)
        return embed_umap(
            connectivities,
            x_pca,
            min_dist=self.minimumDistance,
            metric=self.distanceMetric,
            random_state=store.parameters.random_state,
            progress=lambda done, total: report(done, total, "Computing the UMAP"),
        )


class TsneConfig(_Config):
    perplexity: float = Field(default=30, ge=1, le=100)
    learningRate: float = Field(default=200, ge=1, le=10_000)

    def element_name(self) -> str:
        return f"X_tsne__perplexity_{self.perplexity!r}__learning_rate_{self.learningRate!r}"

    def embed(self, store: ExperimentStore, x_pca: np.ndarray, report: Report) -> np.ndarray:
        return embed_tsne(
            x_pca,
            perplexity=self.perplexity,
            learning_rate=self.learningRate,
            random_state=store.parameters.random_state,
            progress=lambda done, total: report(done, total, "Computing the t-SNE"),
        )


EmbeddingConfig = UmapConfig | TsneConfig
CONFIGS: dict[str, type[EmbeddingConfig]] = {"umap": UmapConfig, "tsne": TsneConfig}


def cached_embedding(
    context: TaskContext, store: ExperimentStore, kind: str, config: EmbeddingConfig
) -> np.ndarray:
    """The `kind` embedding of `config`, from the store's cache or computed and cached."""
    path = f"obsm/{config.element_name()}"
    cached = store.cached(path)
    if cached is not None:
        return cached
    x_pca = store.x_pca()
    if len(x_pca) < MIN_CELLS_FOR_GRAPH:
        raise InvalidRequest(
            f"invalid request: body.type: {kind} needs at least "
            f"{MIN_CELLS_FOR_GRAPH} cells; this experiment has {len(x_pca)}"
        )
    embedding = config.embed(store, x_pca, context.report_progress)
    store.write_cached(path, embedding)
    return embedding


# Cellenics v2: its API's schema (no upper bounds; the JSON types, not Python's strictness).
# UMAP as the platform's R worker runs it: 30 neighbours, in either metric, from the PCA.
UMAP_V2_NEIGHBOURS = 30


class UmapV2Config(UmapConfig):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=False, frozen=True)
    minimumDistance: float = Field(default=0.3, ge=0)

    def element_name(self) -> str:
        return (
            f"X_umap__{self.distanceMetric}__n_neighbors_{UMAP_V2_NEIGHBOURS}"
            f"__min_dist_{self.minimumDistance!r}"
        )

    def neighbours(
        self, store: ExperimentStore, x_pca: np.ndarray, report: Report
    ) -> sparse.csr_matrix:
        report(0, 1, "Finding neighbours")
        connectivities, _ = neighbour_graph(
            x_pca,
            n_neighbors=UMAP_V2_NEIGHBOURS,
            metric=self.distanceMetric,
            random_state=store.parameters.random_state,
        )
        return connectivities


class TsneV2Config(TsneConfig):
    """The same t-SNE as the seed contract's, so both share its cached result."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=False, frozen=True)
    perplexity: float = Field(default=30, gt=0)
    learningRate: float = Field(default=200, ge=0)


V2_CONFIGS: dict[str, type[UmapV2Config | TsneV2Config]] = {
    "umap": UmapV2Config,
    "tsne": TsneV2Config,
}
