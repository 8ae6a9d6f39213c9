"""The AnnData elements that are not counts (obs, var, the PCA, the neighbour graph, uns),
each written once everything it holds is known."""

import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr
from anndata.io import write_elem

from worker.compute.pca import PrincipalComponents
from worker.store.build.ingest import Ingested
from worker.store.build.plan import BuildOptions
from worker.store.locations import STORE_FORMAT

# 8 MiB of one pair of components per chunk.
PCA_ROWS_PER_CHUNK = 1 << 20


def write_tables(
    root: zarr.Group,
    *,
    ingested: Ingested,
    genes: pd.DataFrame,
    gene_ids: np.ndarray,
    gene_names: np.ndarray,
    sample_names: list[str],
) -> None:
    obs = pd.DataFrame(
        {
            "barcode": ingested.barcodes,
            "sample": pd.Categorical.from_codes(ingested.sample_codes, categories=sample_names),
            "total_counts": ingested.total_counts.astype(np.float32),
            "n_genes": ingested.n_genes_by_cell.astype(np.int32),
            "percent_mito": ingested.percent_mito.astype(np.float32),
        },
        index=pd.Index(ingested.barcodes, name="cell"),
    )
    var = pd.DataFrame(
        {
            "gene_ids": gene_ids,
            "gene_names": gene_names,
            "n_cells": ingested.moments.n_cells.astype(np.int64),
            "means": genes["means"].to_numpy(dtype=np.float32),
            "dispersions": genes["dispersions"].to_numpy(dtype=np.float32),
            "dispersions_norm": genes["dispersions_norm"].to_numpy(dtype=np.float32),
            "highly_variable": genes["highly_variable"].to_numpy(dtype=bool),
        },
        index=pd.Index(gene_names, name="gene"),
    )
    write_elem(root, "obs", obs)
    write_elem(root, "var", var)


def write_pca(
    root: zarr.Group,
    *,
    x_pca: np.ndarray,
    pcs: PrincipalComponents,
    hvg_index: np.ndarray,
    n_genes: int,
) -> None:
    loadings = np.zeros((n_genes, len(pcs.components)), dtype=np.float32)
    loadings[hvg_index] = pcs.components.T
    # Pairs of components in chunks of whole columns, unsharded: the first two (GetEmbedding
    # pca) are one object or a few, fetched side by side; in anndata's shards, zarr read each
    # shard's index, then its chunks one after another (8 round trips at 200k cells).
    write_elem(
        root,
        "obsm",
        {"X_pca": x_pca},
        dataset_kwargs={"chunks": (min(len(x_pca), PCA_ROWS_PER_CHUNK), 2), "shards": None},
    )
    write_elem(root, "varm", {"PCs": loadings})


def write_graph(
    root: zarr.Group, *, connectivities: sp.csr_matrix, distances: sp.csr_matrix
) -> None:
    write_elem(root, "obsp", {"connectivities": connectivities, "distances": distances})


def write_metadata(
    root: zarr.Group, *, pcs: PrincipalComponents, options: BuildOptions, provenance: dict
) -> None:
    write_elem(root, "varp", {})
    write_elem(
        root,
        "uns",
        {
            "pca": {"variance": pcs.variance, "variance_ratio": pcs.variance_ratio},
            "worker": {
                "format": STORE_FORMAT,
                "parameters": {
                    "n_top_genes": options.n_top_genes,
                    "n_comps": len(pcs.components),
                    "n_neighbors": options.n_neighbors,
                    "louvain_resolution": options.resolution,
                    "random_state": options.random_state,
                },
                "provenance": provenance,
            },
        },
    )
