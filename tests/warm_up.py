"""numba's machine code compiled once, before `make test` starts its parallel processes.

On a fresh clone numba's cache (`NUMBA_CACHE_DIR`) is empty, and the processes the suite starts
at once (pytest-xdist's, their Dask workers, the servers the tests start) each compiled the same
functions until one of them had cached them: importing umap-learn alone compiles pynndescent's
distances for 15 s of CPU. Here two processes compile them side by side, each its own share:
the neighbour graph and UMAP in one; the store's build, our rank and the scanpy steps the tests
compare with in the other. pynndescent's descent is left out: numba will not cache it.
"""

import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np


def neighbours_and_umap() -> None:
    from worker.compute.graph import embed_umap, neighbour_graph

    rng = np.random.default_rng(0)
    x_pca = rng.normal(size=(300, 10)).astype(np.float32)
    connectivities, _ = neighbour_graph(x_pca)
    embed_umap(connectivities, x_pca)


def store_build_rank_and_scanpy() -> None:
    """The store's build, our rank, and the scanpy steps the tests compare with."""
    import anndata as ad
    import pandas as pd
    import scanpy as sc
    import zarr
    from distributed import Client, LocalCluster

    from worker.compute.rank import rank_gene_block
    from worker.datasets.synthetic import SyntheticDataset, as_source_sample
    from worker.settings import AwsSettings
    from worker.store.build import BuildOptions, BuildPlan, build_store
    from worker.store.locations import zarr_store
    from worker.store.sparse import CompressedMatrix

    dataset = SyntheticDataset(n_cells=400, n_genes=300, seed=0)
    with (
        tempfile.TemporaryDirectory() as folder,
        LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        url = f"{folder}/store"
        build_store(
            # The graph is the other process's.
            plan=BuildPlan(
                url=url, aws=AwsSettings(), options=BuildOptions(min_cells_for_graph=10**9)
            ),
            samples=[as_source_sample(dataset)],
            client=client,
            provenance={},
        )
        store = ad.read_zarr(url)
        in_group1 = np.arange(store.n_obs) % 2 == 0
        total_counts = store.obs["total_counts"].to_numpy()
        # The genes as the tasks read them (64-bit indptr), and as the tests' scipy matrices.
        group = zarr.open_group(zarr_store(url, AwsSettings(), read_only=True), mode="r")
        by_gene = CompressedMatrix(group["layers/counts_by_gene"]).major_range(0, store.n_vars)
        for block in (by_gene, store.layers["counts_by_gene"]):
            rank_gene_block(block, total_counts, in_group1, ~in_group1)

    scanpy_side = ad.AnnData(
        store.X.astype(np.float32), obs=pd.DataFrame({"group": in_group1.astype(str)})
    )
    sc.pp.normalize_total(scanpy_side, target_sum=1e4)
    sc.pp.log1p(scanpy_side)
    sc.pp.highly_variable_genes(scanpy_side, flavor="seurat")
    sc.tl.rank_genes_groups(scanpy_side, "group", method="wilcoxon")
    sc.pp.scale(scanpy_side, max_value=10)


def main() -> int:
    with ProcessPoolExecutor(2) as pool:
        for done in [pool.submit(neighbours_and_umap), pool.submit(store_build_rank_and_scanpy)]:
            done.result()
    return 0


if __name__ == "__main__":
    sys.exit(main())
