"""Helpers shared by the task tests: scanpy's view of a store, and test cell sets."""

import anndata as ad
import scanpy as sc

from worker.settings import Settings
from worker.store.cell_sets import CellSets, CellSetsLocation, update_cell_sets
from worker.store.locations import zarr_store


def scanpy_log_normalised(store_url: str, settings: Settings) -> ad.AnnData:
    """The store read by anndata, log-normalised by scanpy (`normalize_total` and `log1p`)."""
    adata = ad.read_zarr(zarr_store(store_url, settings.aws, read_only=True))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


def cell_sets_location(settings: Settings, experiment_id: str) -> CellSetsLocation:
    return CellSetsLocation(settings.cell_sets_bucket, experiment_id, settings.aws)


def read_hierarchies(settings: Settings, experiment_id: str) -> list[dict]:
    """The experiment's stored cell set hierarchies."""
    return CellSets.read(cell_sets_location(settings, experiment_id)).hierarchies


def store_hierarchy(settings: Settings, experiment_id: str, hierarchy: dict) -> None:
    """Add `hierarchy` to the experiment's cell sets, or replace the one of the same key."""
    update_cell_sets(
        cell_sets_location(settings, experiment_id),
        lambda current: current.with_hierarchy(hierarchy),
    )


def cell_set(key: str, cell_ids) -> dict:
    """A child node holding `cell_ids`."""
    return {"key": key, "name": key, "rootNode": False, "type": "cellSets",
            "cellIds": [int(cell_id) for cell_id in cell_ids]}  # fmt: skip
