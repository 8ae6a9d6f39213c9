"""PrepareExperiment: a source count matrix becomes the experiment store and its cell sets."""

import logging
import time
from typing import Literal

from distributed import worker_client
from pydantic import Field, field_validator

from worker.errors import InvalidRequest
from worker.store.build import PROGRESS_TOPIC, BuildOptions, BuildPlan, build_store
from worker.store.cell_sets import CellSets, cluster_hierarchy, update_cell_sets
from worker.store.experiment import forget_manifest
from worker.store.locations import (
    delete_version,
    filesystem,
    new_version_name,
    publish_version,
    sweep_abandoned_versions,
    version_url,
)
from worker.store.sources import open_source
from worker.tasks.base import Task, TaskBody, TaskContext

log = logging.getLogger(__name__)


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


def prepare_experiment(
    context: TaskContext, body: PrepareExperimentBody, options: BuildOptions | None = None
) -> dict:
    if body.sourceBucket not in context.source_buckets:
        raise InvalidRequest(
            f"invalid request: body.sourceBucket: {body.sourceBucket!r} is not an allowed "
            f"source bucket ({', '.join(context.source_buckets)})"
        )
    options = options or BuildOptions()
    started = time.monotonic()
    fs, _ = filesystem(f"s3://{body.sourceBucket}", context.aws)
    source = f"{body.sourceBucket}/{body.sourceMatrixPath}"
    samples = open_source(fs, source, body.format)
    root, experiment_id, aws = context.store_root, context.experiment_id, context.aws
    for abandoned in sweep_abandoned_versions(root, experiment_id, aws, 4 * options.heartbeat_s):
        log.info("deleted version %s of %s, left by a build that died", abandoned, experiment_id)
    version = new_version_name()
    plan = BuildPlan(url=version_url(root, experiment_id, version), aws=aws, options=options)
    provenance = {"source": f"s3://{source}", "format": body.format}
    try:
        with worker_client() as client:
            summary = build_store(
                plan=plan,
                samples=samples,
                client=client,
                provenance=provenance,
                report=lambda progress: client.log_event(
                    PROGRESS_TOPIC, {"experimentId": experiment_id, **progress}
                ),
            )
    except BaseException:
        delete_version(root, experiment_id, version, aws)
        raise
    store = publish_version(root, experiment_id, version, aws, provenance)
    # Every Dask worker drops the manifest it holds, so that the next query anywhere in the
    # cluster reads the new version rather than wait for the manifest's time to live.
    with worker_client() as client:
        client.run(forget_manifest, root, experiment_id)
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
        "experimentId": experiment_id,
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
