"""GetNGenes, GetNUmis, GetMitochondrialContent and GetDoubletScore (Cellenics v2) through the v2
path: per-cell arrays indexed by cell id, against the counts (log10, as the platform sends
them), the plain percentage, and scanpy's Scrublet."""

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

from tests.conftest import SYNTHETIC_EXPERIMENT
from worker.store.locations import zarr_store


def stored_counts(prepared: dict, settings) -> ad.AnnData:
    return ad.read_zarr(zarr_store(prepared["store"], settings.aws, read_only=True))


def per_cell(v2, task: str, experiment_id: str) -> np.ndarray:
    values = v2.result({"name": task}, experiment_id)
    assert isinstance(values, list)
    return np.array(values, dtype=np.float64)


@pytest.mark.parametrize(
    ("task", "formula"),
    [
        ("GetNGenes", lambda counts, var: np.log10((counts > 0).sum(axis=1))),
        ("GetNUmis", lambda counts, var: np.log10(counts.sum(axis=1))),
        (
            "GetMitochondrialContent",
            lambda counts, var: (
                100
                * counts[:, var["gene_names"].str.startswith(("MT-", "mt-")).to_numpy()].sum(axis=1)
                / counts.sum(axis=1)
            ),
        ),
    ],
)
def test_per_cell_values_are_the_formula_on_the_counts(
    v2, prepared_synthetic, session_settings, task, formula
):
    stored = stored_counts(prepared_synthetic, session_settings)
    values = per_cell(v2, task, SYNTHETIC_EXPERIMENT)
    expected = formula(stored.X.toarray().astype(np.float64), stored.var)
    assert values.shape == (stored.n_obs,)
    np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_doublet_scores_are_scrublets(v2, prepared_10x, session_settings):
    stored = stored_counts(prepared_10x["v3_mtx_gz"], session_settings)
    values = per_cell(v2, "GetDoubletScore", "shared-v3-mtx-gz")
    reference = ad.AnnData(stored.X)
    sc.pp.scrublet(reference, random_state=0)
    np.testing.assert_allclose(values, reference.obs["doublet_score"].to_numpy(), rtol=1e-6)
