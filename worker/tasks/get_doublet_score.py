"""GetDoubletScore: each cell's Scrublet doublet score, computed per sample on the first request
and cached in the store."""

import itertools
from typing import Literal

import numpy as np
from anndata import AnnData
from scipy import sparse

from worker.compute.graph import MIN_CELLS_FOR_GRAPH
from worker.store.experiment import ExperimentStore
from worker.tasks.base import Task, TaskBody, TaskContext, V2TaskBody

# Kept apart from the obs table (not in its column-order), so adding it never rewrites obs.
DOUBLET_SCORES = "obs/doublet_score"
# Scrublet projects on 30 principal components; smaller samples are left unscored.
MIN_CELLS = MIN_CELLS_FOR_GRAPH


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
        scores = doublet_scores(store)
        store.write_cached(DOUBLET_SCORES, scores)
    return scores


def doublet_scores(store: ExperimentStore) -> np.ndarray:
    """`sc.pp.scrublet` run on each sample's raw counts alone, seeded with the store's seed.

    NaN where a cell is not scored: in a sample under MIN_CELLS cells, or with fewer than 3
    genes (Scrublet drops those). Each sample's counts are held in memory while it is scored.
    """
    # Imported here, not at the top: the queue process imports every task module for its schema.
    import scanpy as sc

    random_state = store.parameters.random_state
    sample_codes = store.sample_codes
    # Samples are stored one after the other, so each is one run of rows.
    bounds = [0, *(np.flatnonzero(np.diff(sample_codes)) + 1), len(sample_codes)]
    scores = np.full(len(sample_codes), np.nan, dtype=np.float32)
    for start, stop in itertools.pairwise(bounds):
        if stop - start < MIN_CELLS:
            continue
        sample = AnnData(sparse.csr_matrix(store.rows(start, stop)))
        sc.pp.scrublet(sample, random_state=random_state, verbose=False)
        scores[start:stop] = sample.obs["doublet_score"].to_numpy()
    return scores


TASK = Task(
    name="GetDoubletScore", body=GetDoubletScoreBody, cacheable=True, compute=get_doublet_score
)
V2_TASK = Task(
    name="GetDoubletScore", body=GetDoubletScoreV2Body, cacheable=True, compute=get_doublet_score
)
