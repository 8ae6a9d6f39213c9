"""PrepareExperiment through the real queue, checked against scanpy on the same files."""

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from distributed import Client, LocalCluster

from tests.conftest import (
    SOURCE_BUCKET,
    TENX_DATA,
    RunningWorker,
    result_body,
    upload_folder,
)
from tests.tasks.helpers import read_hierarchies
from worker.store import experiment
from worker.store.locations import filesystem, list_versions, read_manifest, zarr_store


def scanpy_reference(name: str) -> ad.AnnData:
    if name == "v2_mtx":
        return sc.read_10x_mtx(TENX_DATA / "v2_mtx", var_names="gene_ids")
    if name == "v3_mtx_gz":
        return sc.read_10x_mtx(TENX_DATA / "v3_mtx_gz", var_names="gene_ids")
    if name == "v2_h5":
        return sc.read_10x_h5(TENX_DATA / "v2_filtered_gene_bc_matrices.h5")
    return sc.read_10x_h5(TENX_DATA / "v3_filtered_feature_bc_matrix.h5")


@pytest.mark.parametrize("name", ["v2_mtx", "v3_mtx_gz", "v2_h5", "v3_h5"])
def test_store_equals_scanpy_reader(prepared_10x, session_settings, name):
    result = prepared_10x[name]
    store = ad.read_zarr(zarr_store(result["store"], session_settings.aws, read_only=True))
    reference = scanpy_reference(name)
    reference.X.sort_indices()
    assert result["cells"] == reference.n_obs and result["genes"] == reference.n_vars
    assert result["nnz"] == reference.X.nnz
    np.testing.assert_array_equal(store.obs["barcode"], reference.obs_names)
    gene_ids = reference.var.get("gene_ids", reference.var_names)
    np.testing.assert_array_equal(store.var["gene_ids"], gene_ids)
    assert (store.X != reference.X).nnz == 0
    counts_by_gene = store.layers["counts_by_gene"]
    assert counts_by_gene.format == "csc"
    assert (counts_by_gene.tocsr() != store.X).nnz == 0


def scanpy_pipeline(adata: ad.AnnData) -> ad.AnnData:
    """scanpy's own steps, as DESIGN.md names them, on a copy of `adata`."""
    adata = adata.copy()
    adata.var_names_make_unique()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=2000)
    return adata


@pytest.mark.parametrize("name", ["v3_mtx_gz", "v3_h5"])
def test_gene_statistics_and_pca_equal_scanpy(prepared_10x, session_settings, name):
    result = prepared_10x[name]
    store = ad.read_zarr(zarr_store(result["store"], session_settings.aws, read_only=True))
    reference = scanpy_pipeline(scanpy_reference(name))
    for column in ("means", "dispersions", "dispersions_norm"):
        np.testing.assert_allclose(
            store.var[column], reference.var[column], rtol=1e-4, atol=1e-5, equal_nan=True
        )
    np.testing.assert_array_equal(store.var["highly_variable"], reference.var["highly_variable"])
    hvg = reference[:, reference.var["highly_variable"]].copy()
    sc.pp.scale(hvg, max_value=10)
    sc.pp.pca(hvg, n_comps=50, svd_solver="covariance_eigh")
    np.testing.assert_allclose(
        store.uns["pca"]["variance_ratio"], hvg.uns["pca"]["variance_ratio"], rtol=1e-4
    )
    # Components are defined up to sign.
    ours, theirs = store.obsm["X_pca"], hvg.obsm["X_pca"]
    signs = np.sign((ours * theirs).sum(axis=0))
    np.testing.assert_allclose(ours * signs, theirs, rtol=1e-3, atol=1e-3)


def test_qc_columns_equal_plain_formula(prepared_10x, session_settings):
    result = prepared_10x["v3_h5"]
    store = ad.read_zarr(zarr_store(result["store"], session_settings.aws, read_only=True))
    counts = store.X.toarray()
    np.testing.assert_allclose(store.obs["total_counts"], counts.sum(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(store.obs["n_genes"], (counts > 0).sum(axis=1))
    mito = store.var["gene_names"].str.startswith(("MT-", "mt-")).to_numpy()
    expected = 100 * counts[:, mito].sum(axis=1) / counts.sum(axis=1)
    np.testing.assert_allclose(store.obs["percent_mito"], expected, rtol=1e-5)
    np.testing.assert_array_equal(store.var["n_cells"], (counts > 0).sum(axis=0))


def prepare(worker, settings, experiment_id: str, path: str, **fields) -> tuple[dict, dict]:
    body = {"name": "PrepareExperiment", "sourceBucket": SOURCE_BUCKET, "sourceMatrixPath": path}
    response = worker.ask(body | fields, experiment_id=experiment_id, timeout_s=240)
    return response, result_body(response, settings)


def write_mtx(settings, prefix: str, lines: list[str], barcodes: int, genes: int) -> None:
    fs, _ = filesystem("s3://", settings.aws)
    fs.pipe_file(f"{SOURCE_BUCKET}/{prefix}/matrix.mtx", "\n".join(lines).encode() + b"\n")
    fs.pipe_file(
        f"{SOURCE_BUCKET}/{prefix}/barcodes.tsv",
        "".join(f"CELL{i}-1\n" for i in range(barcodes)).encode(),
    )
    fs.pipe_file(
        f"{SOURCE_BUCKET}/{prefix}/genes.tsv",
        "".join(f"ENSG{i}\tG{i}\n" for i in range(genes)).encode(),
    )


@pytest.mark.parametrize(
    ("fields", "code", "mentions"),
    [
        ({"sourceBucket": "somebody-elses-bucket"}, "InvalidRequest", "sourceBucket"),
        ({"sourceMatrixPath": "shared/../secrets"}, "InvalidRequest", "sourceMatrixPath"),
        ({"sourceMatrixPath": "/etc/passwd"}, "InvalidRequest", "sourceMatrixPath"),
        ({"sourceMatrixPath": "nothing/here"}, "SourceNotFound", "nothing/here"),
        ({"format": "loom"}, "InvalidRequest", "format"),
        ({"sourceMatrixPath": "bad/shape"}, "UnsupportedFormat", "barcodes"),
        ({"sourceMatrixPath": "bad/negative"}, "UnsupportedFormat", "negative"),
        ({"sourceMatrixPath": "bad/fractional"}, "UnsupportedFormat", "integer"),
    ],
)
def test_bad_sources_get_clear_errors(session_worker, session_settings, fields, code, mentions):
    header = "%%MatrixMarket matrix coordinate integer general"
    write_mtx(session_settings, "bad/shape", [header, "3 4 2", "1 1 5", "2 2 3"], 5, 3)
    write_mtx(session_settings, "bad/negative", [header, "3 4 2", "1 1 5", "2 2 -3"], 4, 3)
    write_mtx(session_settings, "bad/fractional", [header, "3 4 2", "1 1 5", "2 2 0.5"], 4, 3)
    body = {"name": "PrepareExperiment", "sourceBucket": SOURCE_BUCKET,
            "sourceMatrixPath": "shared/v2_mtx"} | fields  # fmt: skip
    response = session_worker.ask(body, experiment_id="bad-source")
    error = result_body(response, session_settings)["error"]
    assert response["response"] == {"cacheable": False, "error": True}
    assert error["code"] == code
    assert mentions in error["message"]


def test_failure_midway_leaves_the_earlier_version(session_worker, session_settings):
    settings = session_settings
    response, first = prepare(session_worker, settings, "fails-later", "shared/v3_mtx_gz")
    assert response["response"]["error"] is False
    manifest = read_manifest(settings.store_root, "fails-later", settings.aws)
    # Every cell has the same counts: the matrix is written, then no gene varies, and the
    # preparation fails after its store version was half built.
    header = "%%MatrixMarket matrix coordinate integer general"
    lines = [header, "3 40 120"] + [f"{g} {c} 2" for c in range(1, 41) for g in (1, 2, 3)]
    write_mtx(settings, "constant", lines, 40, 3)
    response, failed = prepare(session_worker, settings, "fails-later", "constant")
    assert failed["error"]["code"] == "UnsupportedFormat"
    assert read_manifest(settings.store_root, "fails-later", settings.aws) == manifest
    assert list_versions(settings.store_root, "fails-later", settings.aws) == [manifest["version"]]
    genes = session_worker.ask({"name": "ListGenes", "limit": 3}, experiment_id="fails-later")
    assert result_body(genes, settings)["total"] == first["genes"]


def test_preparing_twice_gives_equal_stores_and_cell_sets(session_worker, session_settings):
    settings = session_settings
    stores, cell_sets = [], []
    for _ in range(2):
        response, result = prepare(session_worker, settings, "twice", "shared/v3_h5/"
                                   "v3_filtered_feature_bc_matrix.h5")  # fmt: skip
        assert response["response"]["error"] is False, result
        stores.append(ad.read_zarr(zarr_store(result["store"], settings.aws, read_only=True)))
        cell_sets.append(read_hierarchies(settings, "twice"))
    first, second = stores
    assert first.obs.equals(second.obs) and first.var.equals(second.var)
    assert (first.X != second.X).nnz == 0
    assert (first.layers["counts_by_gene"] != second.layers["counts_by_gene"]).nnz == 0
    np.testing.assert_array_equal(first.obsm["X_pca"], second.obsm["X_pca"])
    assert (first.obsp["connectivities"] != second.obsp["connectivities"]).nnz == 0
    assert cell_sets[0] == cell_sets[1]


def test_sample_folders_make_one_experiment(session_worker, session_settings):
    settings = session_settings
    upload_folder(settings, TENX_DATA / "v3_mtx_gz", SOURCE_BUCKET, "two/b_mtx")
    upload_folder(
        settings, TENX_DATA / "v3_filtered_feature_bc_matrix.h5", SOURCE_BUCKET, "two/a_h5"
    )
    response, result = prepare(session_worker, settings, "two-samples", "two")
    assert response["response"]["error"] is False, result
    assert result["samples"] == 2
    store = ad.read_zarr(zarr_store(result["store"], settings.aws, read_only=True))
    reference = scanpy_reference("v3_h5")
    n = reference.n_obs
    assert result["cells"] == 2 * n
    np.testing.assert_array_equal(store.obs["barcode"][:n], "a_h5_" + reference.obs_names)
    np.testing.assert_array_equal(store.obs["barcode"][n:], "b_mtx_" + reference.obs_names)
    assert list(store.obs["sample"][[0, n]]) == ["a_h5", "b_mtx"]
    reference.X.sort_indices()
    assert (store.X[n:] != reference.X).nnz == 0
    hierarchies = {h["key"]: h for h in read_hierarchies(settings, "two-samples")}  # fmt: skip
    samples = hierarchies["sample"]["children"]
    assert [child["name"] for child in samples] == ["a_h5", "b_mtx"]
    assert samples[1]["cellIds"] == list(range(n, 2 * n))
    louvain_ids = sorted(
        i for child in hierarchies["louvain"]["children"] for i in child["cellIds"]
    )
    assert louvain_ids == list(range(2 * n))


def _hold_manifests(ttl_s: float) -> None:
    experiment.MANIFEST_TTL_S = ttl_s


def _current_version(store_root: str, experiment_id: str, aws) -> str:
    return experiment.open_experiment(store_root, experiment_id, aws).version


def test_every_dask_worker_reads_the_new_version_once_published(settings):
    """A prepare tells every Dask worker to drop the manifest it holds: each one's next query
    opens the new version, even with manifests held for an hour. On a cluster of two Dask
    workers of its own (the session's has one)."""
    where = (settings.store_root, "republished", settings.aws)
    upload_folder(settings, TENX_DATA / "v3_mtx_gz", SOURCE_BUCKET, "republish/v3_mtx_gz")
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, dashboard_address=None, memory_limit="2GiB"
        ) as cluster,
        Client(cluster) as client,
    ):
        running = RunningWorker(settings, client)
        try:
            response, result = prepare(running, settings, "republished", "republish/v3_mtx_gz")
            assert response["response"]["error"] is False, result
            client.run(_hold_manifests, 3600.0)
            first = client.run(_current_version, *where)
            assert len(first) == 2 and len(set(first.values())) == 1
            response, result = prepare(running, settings, "republished", "republish/v3_mtx_gz")
            assert response["response"]["error"] is False, result
            current = read_manifest(settings.store_root, "republished", settings.aws)["version"]
            assert current not in first.values()
            assert set(client.run(_current_version, *where).values()) == {current}
        finally:
            running.stop()
