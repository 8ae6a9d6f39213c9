"""PrepareExperiment: a source count matrix becomes the experiment store and its cell sets."""

import time
from typing import Literal

from pydantic import Field, field_validator

from worker.errors import InvalidRequest
from worker.store.cell_sets import CellSets, cluster_hierarchy, update_cell_sets
from worker.store.locations import filesystem
from worker.store.prepare import prepare_version
from worker.store.sources import open_source
from worker.tasks.base import Task, TaskBody, TaskContext


class PrepareExperimentBody(TaskBody):
    name: Literal["PrepareExperiment"]
    sourceBucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,62}$")
    sourceMatrixPath: str = Field(pattern=r"^[A-Za-z0-9_.=+-][A-Za-z0-9_.=+ /-]{0,1023}$")
    format: Literal["auto", "10x_mtx", "10x_h5", "h5ad"] = "auto"

    @field_validator("sourceMatrixPath")
    @classmethod
    def _inside_bucket(cls, path: str) -> str:
        segments = path.rstrip("/").split("/")
        if any(segment in ("", ".", "..") for segment in segments):
            raise ValueError("must be a key or prefix with no empty, '.' or '..' segment")
        return path


def prepare_experiment(context: TaskContext, body: PrepareExperimentBody) -> dict:
    if body.sourceBucket not in context.source_buckets:
        raise InvalidRequest(
            f"invalid request: body.sourceBucket: {body.sourceBucket!r} is not an allowed "
            f"source bucket ({', '.join(context.source_buckets)})"
        )
    started = time.monotonic()
    fs, _ = filesystem(f"s3://{body.sourceBucket}", context.aws)
    source = f"{body.sourceBucket}/{body.sourceMatrixPath}"
    summary, store = prepare_version(
        root=context.store_root,
        experiment_id=context.experiment_id,
        aws=context.aws,
        samples=open_source(fs, source, body.format),
        provenance={"source": f"s3://{source}", "format": body.format},
    )
    hierarchies = [
        cluster_hierarchy("louvain", "Louvain clusters", summary.cluster_labels),
        cluster_hierarchy(
            "sample",
            "Samples",
            summary.sample_codes,
            child_keys=[f"sample-{name}" for name in summary.sample_names],
            child_names=summary.sample_names,
        ),
    ]

    def replaced(current: CellSets) -> list[dict]:
        for hierarchy in hierarchies:
            current = CellSets(current.with_hierarchy(hierarchy))
        return current.hierarchies

    update_cell_sets(context.cell_sets_location, replaced)
    return {
        "experimentId": context.experiment_id,
        "cells": summary.n_cells,
        "genes": summary.n_genes,
        "nnz": summary.nnz,
        "samples": len(summary.sample_names),
        "store": store,
        "cellSets": ["louvain", "sample"],
        "seconds": round(time.monotonic() - started, 3),
    }


TASK = Task(
    name="PrepareExperiment",
    body=PrepareExperimentBody,
    cacheable=False,
    compute=prepare_experiment,
)
