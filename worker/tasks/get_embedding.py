"""GetEmbedding: two coordinates per cell from the stored PCA, or a UMAP or t-SNE of it that is
computed once per config and cached in the store."""

from typing import Any, Literal

import numpy as np
from anndata.io import read_elem
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from worker.compute.graph import embed_tsne, embed_umap, neighbour_graph
from worker.errors import InvalidRequest
from worker.messages import TaskBody
from worker.store.build import BuildOptions
from worker.store.cached import read_cached, write_cached
from worker.store.experiment import ExperimentStore, open_experiment
from worker.tasks.base import Task, TaskContext


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class UmapConfig(_Config):
    # umap-learn needs min_dist <= spread, which scanpy leaves at 1.
    minimumDistance: float = Field(default=0.3, ge=0, le=1)
    distanceMetric: Literal["euclidean", "cosine"] = "euclidean"

    def element_name(self) -> str:
        return f"X_umap__{self.distanceMetric}__min_dist_{self.minimumDistance!r}"

    def embed(self, store: ExperimentStore, x_pca: np.ndarray) -> np.ndarray:
        parameters = read_elem(store.group["uns/worker/parameters"])
        if self.distanceMetric == "euclidean":
            connectivities = read_elem(store.group["obsp/connectivities"])
        else:
            connectivities, _ = neighbour_graph(
                x_pca,
                n_neighbors=int(parameters["n_neighbors"]),
                metric="cosine",
                random_state=int(parameters["random_state"]),
            )
        return embed_umap(
            connectivities,
            x_pca,
            min_dist=self.minimumDistance,
            metric=self.distanceMetric,
            random_state=int(parameters["random_state"]),
        )


class TsneConfig(_Config):
    perplexity: float = Field(default=30, ge=1, le=100)
    learningRate: float = Field(default=200, ge=1, le=10_000)

    def element_name(self) -> str:
        return f"X_tsne__perplexity_{self.perplexity!r}__learning_rate_{self.learningRate!r}"

    def embed(self, store: ExperimentStore, x_pca: np.ndarray) -> np.ndarray:
        parameters = read_elem(store.group["uns/worker/parameters"])
        return embed_tsne(
            x_pca,
            perplexity=self.perplexity,
            learning_rate=self.learningRate,
            random_state=int(parameters["random_state"]),
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
    store = open_experiment(context.store_root, context.experiment_id, context.aws)
    if body.type == "pca":
        return pca_coordinates(store)
    path = f"obsm/{body.config.element_name()}"
    cached = read_cached(store, path)
    if cached is not None:
        return cached
    x_pca = store.group["obsm/X_pca"][...]
    if len(x_pca) < BuildOptions.min_cells_for_graph:
        raise InvalidRequest(
            f"invalid request: body.type: {body.type} needs at least "
            f"{BuildOptions.min_cells_for_graph} cells; this experiment has {len(x_pca)}"
        )
    embedding = body.config.embed(store, x_pca)
    write_cached(store, context.aws, path, embedding)
    return embedding


def pca_coordinates(store: ExperimentStore) -> np.ndarray:
    """The first two principal components of each cell."""
    x_pca = store.group["obsm/X_pca"]
    first_two = x_pca[:, :2]
    # An experiment of two cells has a single component; its second coordinate is 0.
    coordinates = np.zeros((x_pca.shape[0], 2), dtype=np.float32)
    coordinates[:, : first_two.shape[1]] = first_two
    return coordinates


TASK = Task(name="GetEmbedding", body=GetEmbeddingBody, cacheable=True, compute=get_embedding)
