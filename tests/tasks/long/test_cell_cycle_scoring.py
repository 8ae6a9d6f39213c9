"""CellCycleScoring through the v2 path: the Phase class PATCHed to the platform's API, each
cell's phase equal to scanpy's score_genes_cell_cycle on the same data."""

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from scipy import sparse

from tests.tasks.long.conftest import LONG_EXPERIMENT
from worker.data.cell_cycle_genes import G2M_GENES, S_GENES
from worker.store.cell_sets import CellSets, CellSetsLocation
from worker.store.experiment import open_experiment


def scanpy_phases(store) -> np.ndarray:
    adata = AnnData(
        X=sparse.csr_matrix(store.rows(0, store.n_cells), dtype=np.float32),
        var=pd.DataFrame(index=store.var["gene_names"].to_numpy()),
    )
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.tl.score_genes_cell_cycle(adata, s_genes=S_GENES, g2m_genes=G2M_GENES)
    return adata.obs["phase"].to_numpy()


def test_phases_are_scanpys_and_patched_as_the_platform_does(
    v2, long_settings, platform_api, long_dataset
):
    message = v2.message({"name": "CellCycleScoring", "experimentId": "ignored"}, LONG_EXPERIMENT)
    v2.send(message)
    answer = v2.answer(message, timeout_s=180)
    assert answer.notification["response"] == {
        "cacheable": False, "error": False, "signedUrl": message["signedUrl"]}  # fmt: skip

    store = open_experiment(long_settings.store_root, LONG_EXPERIMENT, long_settings.aws)
    expected = scanpy_phases(store)
    assert set(expected) == {"G1", "S", "G2M"}
    first_seen = list(dict.fromkeys(expected))

    [patch] = [p for p in platform_api.patches if p.experiment_id == LONG_EXPERIMENT
               and "Phase" in str(p.operations)]  # fmt: skip
    assert patch.authorization == message["Authorization"]
    remove, prepend = patch.operations
    assert remove == {"$match": {"query": '$[?(@.key == "Phase")]', "value": {"$remove": True}}}
    phase_class = prepend["$prepend"]
    assert {k: phase_class[k] for k in ("key", "name", "rootNode", "type")} == {
        "key": "Phase", "name": "Phase", "rootNode": True, "type": "cellSets"}  # fmt: skip
    assert [child["name"] for child in phase_class["children"]] == first_seen
    for child in phase_class["children"]:
        assert child["key"] == f"Phase-{child['name']}"
        assert child["cellIds"] == np.flatnonzero(expected == child["name"]).tolist()
    # The generated phases are found (the data are built for it), and the class is stored first.
    assert (expected == long_dataset.phase).mean() > 0.75
    location = CellSetsLocation(long_settings.cell_sets_bucket, LONG_EXPERIMENT, long_settings.aws)
    assert CellSets.read(location).hierarchies[0] == phase_class
