"""GetEmbedding: two coordinates per cell from the stored PCA, or a UMAP or t-SNE of it that is
computed once per config and cached in the store."""

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from scipy import sparse

from worker.compute.graph import MIN_CELLS_FOR_GRAPH, embed_tsne, embed_umap, neighbour_graph
from worker.errors import InvalidRequest
from worker.store.experiment import ExperimentStore
from worker.tasks.base import Task, TaskBody, TaskContext, V2TaskBody

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
        report(0, 2, "Finding neighbours")
        connectivities, _ = neighbour_graph(
            x_pca,
            n_neighbors=parameters.n_neighbors,
            metric="cosine",
            random_state=parameters.random_state,
        )
        return connectivities

    def embed(self, store: ExperimentStore, x_pca: np.ndarray, report: Report) -> np.ndarray:
        connectivities = self.neighbours(store, x_pca, report)
        report(1, 2, "Computing the UMAP")
        return embed_umap(
            connectivities,
            x_pca,
            min_dist=self.minimumDistance,
            metric=self.distanceMetric,
            random_state=store.parameters.random_state,
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


class GetEmbeddingBody(TaskBody):
    name: Literal["GetEmbedding"]
    type: Literal["pca", "umap", "tsne"]
    # The config of `type` (its defaults when left out); None for pca, which has none.
    config: UmapConfig | TsneConfig | None = Field(default=None, validate_default=True)

    @field_validator("config", mode="before")
    @classmethod
    def _config_of_type(cls, config: Any, info: ValidationInfo) -> UmapConfig | TsneConfig | None:
        model = CONFIGS.get(info.data.get("type"))
        return None if model is None else model.model_validate(config or {})


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


def get_embedding(context: TaskContext, body: GetEmbeddingBody) -> np.ndarray:
    store = context.store()
    if body.type == "pca":
        return store.pca_coordinates()
    return cached_embedding(context, store, body.type, body.config)


TASK = Task(name="GetEmbedding", body=GetEmbeddingBody, cacheable=True, compute=get_embedding)


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
        report(0, 2, "Finding neighbours")
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


class GetEmbeddingV2Body(V2TaskBody):
    name: Literal["GetEmbedding"]
    type: Literal["pca", "umap", "tsne", "images"]
    # The config of `type` (its defaults when left out); None for pca and images.
    config: UmapV2Config | TsneV2Config | None = Field(default=None, validate_default=True)
    useSaved: bool = False

    @field_validator("config", mode="before")
    @classmethod
    def _config_of_type(
        cls, config: Any, info: ValidationInfo
    ) -> UmapV2Config | TsneV2Config | None:
        model = V2_CONFIGS.get(info.data.get("type"))
        return None if model is None else model.model_validate(config or {})


def get_embedding_v2(context: TaskContext, body: GetEmbeddingV2Body) -> np.ndarray:
    if body.type == "images":
        raise InvalidRequest(
            "invalid request: body.type: images: this experiment has no spatial images"
        )
    store = context.store()
    if body.type == "pca":
        return store.pca_coordinates()
    if not body.useSaved:
        return cached_embedding(context, store, body.type, body.config)
    saved = store.cached(f"obsm/{body.config.element_name()}")
    if saved is None:
        raise InvalidRequest(
            f"invalid request: body.useSaved: no {body.type} embedding of this config is saved; "
            "ask without useSaved to compute it"
        )
    return saved


V2_TASK = Task(
    name="GetEmbedding", body=GetEmbeddingV2Body, cacheable=True, compute=get_embedding_v2
)
