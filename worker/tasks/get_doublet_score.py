"""GetDoubletScore: each cell's Scrublet doublet score, computed per sample (a large one in
batches) on the first request and cached in the store."""

import itertools
import uuid
from collections.abc import Callable
from math import ceil
from typing import Literal

import numpy as np
from distributed import as_completed, worker_client
from scipy import sparse

from worker.compute.graph import MIN_CELLS_FOR_GRAPH
from worker.compute.scrublet import scrublet_scores
from worker.settings import AwsSettings
from worker.store.experiment import ExperimentStore, open_version
from worker.tasks.base import Task, TaskBody, TaskContext, V2TaskBody

# Kept apart from the obs table (not in its column-order), so adding it never rewrites obs.
DOUBLET_SCORES = "obs/doublet_score"
# Scrublet projects on 30 principal components; smaller samples are left unscored.
MIN_CELLS = MIN_CELLS_FOR_GRAPH
# A sample is scored in batches of at most this many cells, so a 10x channel (up to some
# 20,000 cells) is one. Scoring holds about 150 kB per cell on the benchmarks' data (1.8 GB
# for 10,000 cells, 3.2 GB for 25,000), and a Dask worker's threads may score one each.
CELLS_PER_BATCH = 20_000


class GetDoubletScoreBody(TaskBody):
    name: Literal["GetDoubletScore"]


class GetDoubletScoreV2Body(V2TaskBody):
    name: Literal["GetDoubletScore"]


def get_doublet_score(
    context: TaskContext, body: GetDoubletScoreBody | GetDoubletScoreV2Body
) -> np.ndarray:
    """Each cell's score, indexed by cell id (also the v2 answer's per-cell array)."""
    store = context.store()
    scores = store.cached(DOUBLET_SCORES)
    if scores is None:
        scores = doublet_scores(
            store, lambda done, total: context.report_progress(done, total, "Scoring doublets")
        )
        store.write_cached(DOUBLET_SCORES, scores)
    return scores


def doublet_scores(
    store: ExperimentStore,
    report: Callable[[int, int], None],
    cells_per_batch: int = CELLS_PER_BATCH,
) -> np.ndarray:
    """`sc.pp.scrublet` run on each batch's raw counts alone, seeded with the store's seed: a
    sample is one batch, or if it has more than `cells_per_batch` cells, runs of consecutive
    cells of near-equal sizes, as scanpy's `batch_key` runs it per batch.

    NaN where a cell is not scored: in a batch under MIN_CELLS cells, or with fewer than 3
    genes (Scrublet drops those). Each batch is a Dask task of its own that reads only its
    rows, so the memory held follows the batch size, not the sample's or the experiment's.
    `report(done, total)` is called as each batch is scored. Call it from a task running on a
    Dask worker.
    """
    sample_codes = store.sample_codes
    # Samples are stored one after the other, so each is one run of rows.
    sample_bounds = [0, *(np.flatnonzero(np.diff(sample_codes)) + 1), len(sample_codes)]
    batches = [
        (int(cells[0]), int(cells[-1]) + 1)
        for start, stop in itertools.pairwise(sample_bounds)
        for cells in np.array_split(np.arange(start, stop), ceil((stop - start) / cells_per_batch))
        if len(cells) >= MIN_CELLS
    ]
    where = (store.experiment_id, store.version, store.url, store.aws)
    random_state = store.parameters.random_state
    name = f"doublet-scores-batch-{uuid.uuid4().hex}"
    with worker_client() as client:
        futures = [
            client.submit(_batch_scores, *where, start, stop, random_state, key=f"{name}-{index}")
            for index, (start, stop) in enumerate(batches)
        ]
        for done, _ in enumerate(as_completed(futures), start=1):
            report(done, len(futures))
        batch_scores = client.gather(futures)
    scores = np.full(len(sample_codes), np.nan, dtype=np.float32)
    for (start, stop), values in zip(batches, batch_scores, strict=True):
        scores[start:stop] = values
    return scores


def _batch_scores(
    experiment_id: str,
    version: str,
    url: str,
    aws: AwsSettings,
    start: int,
    stop: int,
    random_state: int,
) -> np.ndarray:
    store = open_version(experiment_id, version, url, aws)
    return scrublet_scores(sparse.csr_matrix(store.rows(start, stop)), random_state)


TASK = Task(
    name="GetDoubletScore", body=GetDoubletScoreBody, cacheable=True, compute=get_doublet_score
)
V2_TASK = Task(
    name="GetDoubletScore", body=GetDoubletScoreV2Body, cacheable=True, compute=get_doublet_score
)
