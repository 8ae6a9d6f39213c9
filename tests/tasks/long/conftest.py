"""The long-running Cellenics v2 tasks' fixtures: an experiment of four samples with genes named
after the cell cycle's and two cell types' markers, prepared once, and one v2 worker whose cell
set changes go to a stand-in of the platform's API."""

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from tests.conftest import SOURCE_BUCKET, RunningWorker, make_settings, result_body
from worker.data.cell_cycle_genes import G2M_GENES, S_GENES
from worker.local.client import V2Client
from worker.local.platform_api import PlatformApiStandIn
from worker.store.locations import filesystem
from worker.tasks import V2_TASKS
from worker.transport.seed import SeedProtocol
from worker.transport.socketio import SocketEmitter
from worker.transport.v2 import V2Protocol

LONG_EXPERIMENT = "long-tasks"
SCTYPE_DB = f"s3://{SOURCE_BUCKET}/sctype/ScTypeDB_test.xlsx"
SAMPLES = ("s1", "s2", "s3", "s4")
CELLS_PER_SAMPLE = 150
TYPE_A_MARKERS = [f"ALPHA{index}" for index in range(12)]
TYPE_B_MARKERS = [f"BETA{index}" for index in range(12)]
# Higher in samples s1 and s2 than in s3 and s4: what "between" finds.
CONDITION_GENES = [f"COND{index}" for index in range(8)]
FILLERS = [f"GENE{index}" for index in range(150)]
GENE_NAMES = S_GENES + G2M_GENES + TYPE_A_MARKERS + TYPE_B_MARKERS + CONDITION_GENES + FILLERS


@dataclass(frozen=True)
class LongDataset:
    counts: sparse.csr_matrix  # all samples' cells, in sample order
    cell_type: np.ndarray  # "A" or "B" per cell
    phase: np.ndarray  # "G1", "S" or "G2M" per cell
    sample: np.ndarray


def make_long_dataset(seed: int = 7) -> LongDataset:
    rng = np.random.default_rng(seed)
    n_cells = CELLS_PER_SAMPLE * len(SAMPLES)
    genes = np.array(GENE_NAMES)
    base = rng.gamma(0.6, 1.2, len(genes))
    cell_type = np.where(rng.random(n_cells) < 0.5, "A", "B")
    phase = rng.choice(["G1", "S", "G2M"], n_cells)
    sample = np.repeat(SAMPLES, CELLS_PER_SAMPLE)
    rates = np.tile(base, (n_cells, 1))
    rates[np.ix_(cell_type == "A", np.isin(genes, TYPE_A_MARKERS))] *= 8
    rates[np.ix_(cell_type == "B", np.isin(genes, TYPE_B_MARKERS))] *= 8
    rates[np.ix_(phase == "S", np.isin(genes, S_GENES))] *= 4
    rates[np.ix_(phase == "G2M", np.isin(genes, G2M_GENES))] *= 4
    rates[np.ix_(np.isin(sample, ["s1", "s2"]), np.isin(genes, CONDITION_GENES))] *= 4
    rates *= rng.uniform(0.6, 1.6, n_cells)[:, None]
    counts = sparse.csr_matrix(rng.poisson(rates).astype(np.float32))
    return LongDataset(counts, cell_type, phase, sample)


@pytest.fixture(scope="session")
def long_dataset() -> LongDataset:
    return make_long_dataset()


@pytest.fixture(scope="session")
def prepared_long(session_settings, session_worker, long_dataset, tmp_path_factory) -> dict:
    """The dataset as four h5ad samples under one prefix, prepared as experiment `long-tasks`."""
    fs, _ = filesystem("s3://", session_settings.aws)
    var = pd.DataFrame(
        {"gene_ids": [f"ENSG{index:011d}" for index in range(1, len(GENE_NAMES) + 1)]},
        index=GENE_NAMES,
    )
    for index, name in enumerate(SAMPLES):
        rows = slice(index * CELLS_PER_SAMPLE, (index + 1) * CELLS_PER_SAMPLE)
        barcodes = [f"CELL{cell:04d}-1" for cell in range(CELLS_PER_SAMPLE)]
        sample = ad.AnnData(X=long_dataset.counts[rows], obs=pd.DataFrame(index=barcodes), var=var)
        local = tmp_path_factory.mktemp(name) / "matrix.h5ad"
        sample.write_h5ad(local)
        fs.put_file(str(local), f"{SOURCE_BUCKET}/long/{name}/matrix.h5ad")
    response = session_worker.ask(
        {"name": "PrepareExperiment", "sourceBucket": SOURCE_BUCKET, "sourceMatrixPath": "long"},
        experiment_id=LONG_EXPERIMENT,
        timeout_s=300,
    )
    body = result_body(response, session_settings)
    assert response["response"]["error"] is False, body
    return body


@pytest.fixture(scope="session")
def platform_api(emulator):
    settings = make_settings(emulator.url)
    api = PlatformApiStandIn(settings.cell_sets_bucket, settings.aws)
    yield api
    api.stop()


@pytest.fixture(scope="session")
def long_settings(emulator, redis_server, platform_api):
    return make_settings(
        emulator.url,
        WORKER_REDIS_URL=redis_server.url,
        WORKER_API_URL=platform_api.url,
        WORKER_SCTYPE_DB=SCTYPE_DB,
    )


@pytest.fixture(scope="session")
def long_worker(long_settings, dask_client, prepared_long):
    emitter = SocketEmitter(long_settings.redis_url)
    running = RunningWorker(
        long_settings,
        dask_client,
        [SeedProtocol(long_settings), V2Protocol(long_settings, emitter, V2_TASKS)],
    )
    yield running
    running.stop()
    emitter.close()


@pytest.fixture
def v2(long_settings, long_worker):
    client = V2Client(long_settings)
    yield client
    client.close()
