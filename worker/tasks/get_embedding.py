"""GetEmbedding: two coordinates per cell from the stored PCA, or a UMAP or t-SNE of it that is
computed once per config and cached in the store."""

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from worker.compute.graph import MIN_CELLS_FOR_GRAPH, embed_tsne, embed_umap, neighbour_graph
from worker.errors import InvalidRequest
from worker.store.experiment import ExperimentStore
from worker.tasks.base import Task, TaskBody, TaskContext


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True, frozen=True)


class UmapConfig(_Config):
    # umap-learn needs min_dist <= spread, which scanpy leaves at 1.
    minimumDistance: float = Field(default=0.3, ge=0, le=1)
    distanceMetric: Literal["euclidean", "cosine"] = "euclidean"

    def element_name(self) -> str:
        return f"X_umap__{self.distanceMetric}__min_dist_{self.minimumDistance!r}"

    def embed(self, store: ExperimentStore, x_pca: np.ndarray) -> np.ndarray:
        parameters = store.parameters
        if self.distanceMetric == "euclidean":
            connectivities = store.connectivities()
        else:
            connectivities, _ = neighbour_graph(
                x_pca,
                n_neighbors=parameters.n_neighbors,
                metric="cosine",
                random_state=parameters.random_state,
            )
        return embed_umap(
            connectivities,
            x_pca,
            min_dist=self.minimumDistance,
            metric=self.distanceMetric,
            random_state=parameters.random_state,
        )


class TsneConfig(_Config):
    perplexity: float = Field(default=30, ge=1, le=100)
    learningRate: float = Field(default=200, ge=1, le=10_000)

    def element_name(self) -> str:
        return f"X_tsne__perplexity_{self.perplexity!r}__learning_rate_{self.learningRate!r}"

    def embed(self, store: ExperimentStore, x_pca: np.ndarray) -> np.ndarray:
        return embed_tsne(
            x_pca,
            perplexity=self.perplexity,
            learning_rate=self.learningRate,
            random_state=store.parameters.random_state,
        )


CONFIGS: dict[str, type[UmapConfig | TsneConfig]] = {"umap": UmapConfig, "tsne": TsneConfig}


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


def get_embedding(context: TaskContext, body: GetEmbeddingBody) -> np.ndarray:
    store = context.store()
    if body.type == "pca":
        return store.pca_coordinates()
    path = f"obsm/{body.config.element_name()}"
    cached = store.cached(path)
    if cached is not None:
        return cached
    x_pca = store.x_pca()
    if len(x_pca) < MIN_CELLS_FOR_GRAPH:
        raise InvalidRequest(
            f"invalid request: body.type: {body.type} needs at least "
            f"{MIN_CELLS_FOR_GRAPH} cells; this experiment has {len(x_pca)}"
        )
    embedding = body.config.embed(store, x_pca)
    store.write_cached(path, embedding)
    return embedding


TASK = Task(name="GetEmbedding", body=GetEmbeddingBody, cacheable=True, compute=get_embedding)
