import itertools

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import stats
from statsmodels.stats.multitest import multipletests

from tests.compute.synthetic import log_normalised_anndata
from worker.compute.rank import adjust_pvalues, rank_gene_block


def streamed_rank(counts, in_group1, in_group2, method, n_blocks) -> pd.DataFrame:
    """Rank the genes in `n_blocks` CSC gene blocks holding only the cells of the groups."""
    cells = in_group1 | in_group2
    counts_by_gene = counts[cells].tocsc()
    counts_by_gene.sort_indices()
    total_counts = np.asarray(counts[cells].sum(axis=1)).ravel()
    bounds = np.linspace(0, counts.shape[1], n_blocks + 1).astype(int)
    parts = [
        rank_gene_block(
            counts_by_gene[:, start:stop], total_counts, in_group1[cells], in_group2[cells], method
        )
        for start, stop in itertools.pairwise(bounds)
    ]
    result = pd.DataFrame({key: np.concatenate([p[key] for p in parts]) for key in parts[0]})
    result["p_val_adj"] = adjust_pvalues(result["p_val"].to_numpy())
    return result


def scanpy_rank(counts, clusters, method, reference) -> pd.DataFrame:
    adata = log_normalised_anndata(counts)
    adata.obs["cluster"] = pd.Categorical(clusters.astype(str))
    sc.tl.rank_genes_groups(
        adata,
        "cluster",
        groups=["0"],
        reference=reference,
        method=method,
        use_raw=False,
        tie_correct=False,
    )
    ranked = adata.uns["rank_genes_groups"]
    names = [int(name[4:]) for name in ranked["names"]["0"]]
    return pd.DataFrame(
        {key: ranked[key]["0"] for key in ["scores", "logfoldchanges", "pvals", "pvals_adj"]},
        index=names,
    ).sort_index()


@pytest.mark.parametrize("method", ["wilcoxon", "t-test"])
@pytest.mark.parametrize("reference", ["rest", "2"])
@pytest.mark.parametrize("n_blocks", [1, 4])
def test_rank_gene_blocks_equal_scanpy(counts_and_clusters, method, reference, n_blocks):
    counts, clusters = counts_and_clusters
    in_group1 = clusters == 0
    in_group2 = ~in_group1 if reference == "rest" else clusters == int(reference)
    result = streamed_rank(counts, in_group1, in_group2, method, n_blocks)
    expected = scanpy_rank(counts, clusters, method, reference)

    np.testing.assert_allclose(result["zscore"], expected["scores"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result["logFC"], expected["logfoldchanges"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result["p_val"], expected["pvals"], rtol=1e-10)
    np.testing.assert_allclose(result["p_val_adj"], expected["pvals_adj"], rtol=1e-10)
    assert result["p_val"].min() < 1e-10  # the marker genes are found

    dense = counts.toarray()
    np.testing.assert_allclose(result["pct_1"], (dense[in_group1] > 0).mean(axis=0))
    np.testing.assert_allclose(result["pct_2"], (dense[in_group2] > 0).mean(axis=0))


@pytest.mark.parametrize("method", ["wilcoxon", "t-test"])
def test_plain_formula(counts_and_clusters, method):
    counts, clusters = counts_and_clusters
    in_group1, in_group2 = clusters == 1, clusters == 3
    result = streamed_rank(counts, in_group1, in_group2, method, n_blocks=3)

    log_values = log_normalised_anndata(counts).X.toarray().astype(np.float64)
    group1, group2 = log_values[in_group1], log_values[in_group2]
    if method == "wilcoxon":
        # scipy's rank-sum test has no tie correction either
        expected = stats.ranksums(group1, group2, axis=0)
    else:
        expected = stats.ttest_ind(group1, group2, axis=0, equal_var=False)
    expressed = (group1 != 0).any(axis=0) | (group2 != 0).any(axis=0)
    np.testing.assert_allclose(
        result["zscore"][expressed], expected.statistic[expressed], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(result["p_val"][expressed], expected.pvalue[expressed], rtol=1e-5)


def test_adjust_pvalues_equals_statsmodels():
    p_values = np.random.default_rng(1).uniform(size=500) ** 3
    p_values[[3, 70, 200]] = p_values[10]  # ties
    expected = multipletests(p_values, method="fdr_bh")[1]
    np.testing.assert_array_equal(adjust_pvalues(p_values), expected)
