"""ListGenes (Cellenics v2) through the v2 path, against the platform's filter, order and page
written out with pandas over the stored gene table."""

import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from tests.conftest import SYNTHETIC_EXPERIMENT
from worker.store.locations import zarr_store

TENX_EXPERIMENT = "shared-v3-mtx-gz"


def gene_table(prepared: dict, settings) -> pd.DataFrame:
    var = ad.read_zarr(zarr_store(prepared["store"], settings.aws, read_only=True)).var
    return pd.DataFrame(
        {"gene_names": var["gene_names"].to_numpy(), "dispersions": var["dispersions_norm"]}
    ).reset_index(drop=True)


def platform_page(genes: pd.DataFrame, body: dict) -> dict:
    """The platform's ListGenes: its Python front strips `{}|()?¿*+/.<>` from the filter, its R
    greps the rest ignoring case, orders (stable, NA last), pages; our choices where it is
    silent: `total` counts the filtered genes, the direction ignores case."""
    if body.get("geneNamesFilter") is not None:
        pattern = re.sub(r"[{}|()?¿*+/.<>]", "", body["geneNamesFilter"])
        genes = genes[genes["gene_names"].str.contains(pattern, case=False, regex=True)]
    if body["orderBy"] in genes:
        genes = genes.sort_values(
            body["orderBy"],
            ascending=body["orderDirection"].upper() != "DESC",
            kind="stable",
            na_position="last",
        )
    page = genes.iloc[body["offset"] : body["offset"] + body["limit"]]
    return {
        "total": len(genes),
        "gene_names": page["gene_names"].tolist(),
        "dispersions": [None if np.isnan(value) else value for value in page["dispersions"]],
    }


def assert_page(result: dict, expected: dict) -> None:
    assert result["total"] == expected["total"]
    assert result["gene_names"] == expected["gene_names"]
    assert [value is None for value in result["dispersions"]] == [
        value is None for value in expected["dispersions"]
    ]
    np.testing.assert_allclose(
        [value for value in result["dispersions"] if value is not None],
        [value for value in expected["dispersions"] if value is not None],
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "page",
    [
        # The UI's first page: the most variable genes.
        {"orderBy": "dispersions", "orderDirection": "DESC", "offset": 0, "limit": 50},
        # A prefix search, with characters the platform strips.
        {"orderBy": "gene_names", "orderDirection": "ASC", "offset": 2, "limit": 5,
         "geneNamesFilter": "^c(d)"},
        # `.` is stripped: GENE99 and GENE990 to GENE999, descending in lower case.
        {"orderBy": "gene_names", "orderDirection": "desc", "offset": 0, "limit": 1000000,
         "geneNamesFilter": "GENE99."},
        # One gene, still arrays; an unknown order leaves the store's.
        {"orderBy": "means", "orderDirection": "ASC", "offset": 0, "limit": 10,
         "geneNamesFilter": "^cst3$"},
    ],
)  # fmt: skip
def test_pages_are_the_platforms(v2, prepared_synthetic, session_settings, page):
    body = {"name": "ListGenes", "selectFields": ["gene_names", "dispersions"], **page}
    result = v2.result(body, SYNTHETIC_EXPERIMENT)
    expected = platform_page(gene_table(prepared_synthetic, session_settings), body)
    assert set(result) == {"total", "gene_names", "dispersions"}
    assert expected["total"] > 0
    assert_page(result, expected)


def test_genes_without_a_dispersion_come_last_as_null(v2, prepared_10x, session_settings):
    body = {"name": "ListGenes", "selectFields": ["gene_names", "dispersions"],
            "orderBy": "dispersions", "orderDirection": "ASC", "offset": 0,
            "limit": 1000000}  # fmt: skip
    result = v2.result(body, TENX_EXPERIMENT)
    genes = gene_table(prepared_10x["v3_mtx_gz"], session_settings)
    assert genes["dispersions"].isna().any()
    assert_page(result, platform_page(genes, body))


def test_an_invalid_expression_is_invalid_input(v2):
    body = {"name": "ListGenes", "selectFields": ["gene_names"], "orderBy": "gene_names",
            "orderDirection": "ASC", "offset": 0, "limit": 10,
            "geneNamesFilter": "CD[3"}  # fmt: skip
    error = v2.error(body, SYNTHETIC_EXPERIMENT)
    assert error["errorCode"] == "INVALID_INPUT"
    assert "body.geneNamesFilter" in error["userMessage"]
