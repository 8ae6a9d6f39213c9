"""GetEmbedding: two coordinates per cell from the stored PCA, or a UMAP or t-SNE of it that is
computed once per config and cached in the store."""

from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from worker.errors import InvalidRequest
from worker.tasks.base import Task, TaskBody, TaskContext, V2TaskBody
from worker.tasks.embeddings import (
    CONFIGS,
    V2_CONFIGS,
    TsneConfig,
    TsneV2Config,
    UmapConfig,
    UmapV2Config,
    cached_embedding,
)


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
    return cached_embedding(context, store, body.type, body.config)


TASK = Task(name="GetEmbedding", body=GetEmbeddingBody, cacheable=True, compute=get_embedding)


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
