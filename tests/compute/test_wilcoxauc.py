"""presto's wilcoxauc from gene blocks, against scipy's Mann-Whitney U test (tie-corrected normal
approximation with continuity correction, which is presto's p-value) on the same values."""

import itertools

import numpy as np
import pytest

from tests.compute.presto import pandas_top_markers, presto_formula, presto_reference
from tests.compute.synthetic import log_normalised_anndata
from worker.compute.rank import NO_GROUP
from worker.compute.wilcoxauc import (
    base_table,
    group_rank_sums,
    group_sizes,
    joined,
    labelling,
    present_groups,
    sample_groups,
    top_markers,
    wilcoxauc,
)


def blockwise(counts, labellings, n_blocks):
    """`group_rank_sums` over `n_blocks` CSC gene blocks, joined."""
    counts_by_gene = counts.tocsc()
    counts_by_gene.sort_indices()
    total_counts = np.asarray(counts.sum(axis=1)).ravel()
    bounds = np.linspace(0, counts.shape[1], n_blocks + 1).astype(int)
    return joined(
        [
            group_rank_sums(counts_by_gene[:, start:stop], total_counts, labellings)
            for start, stop in itertools.pairwise(bounds)
        ]
    )


def assert_equals_reference(statistics, reference):
    np.testing.assert_allclose(statistics["pval"], reference["pval"], rtol=1e-9)
    np.testing.assert_allclose(statistics["padj"], reference["padj"], rtol=1e-9)
    np.testing.assert_array_equal(statistics["auc"], reference["auc"])
    np.testing.assert_allclose(statistics["logFC"], reference["logFC"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(statistics["pct_in"], reference["pct_in"], rtol=1e-12)
    np.testing.assert_allclose(statistics["pct_out"], reference["pct_out"], rtol=1e-12)


@pytest.mark.parametrize("n_blocks", [1, 3])
def test_several_labellings_in_one_pass_equal_scipy(counts_and_clusters, n_blocks):
    counts, clusters = counts_and_clusters
    values = log_normalised_anndata(counts).X.toarray().astype(np.float64)
    n_cells = len(clusters)
    one_vs_rest = clusters.astype(np.int32)
    # Two groups, a third of the cells in neither.
    pair = labelling([np.flatnonzero(clusters == 1), np.flatnonzero(clusters == 3)], n_cells)

    sums = blockwise(counts, [one_vs_rest, pair], n_blocks)

    for labels, rank_sums in zip([one_vs_rest, pair], sums, strict=True):
        statistics = wilcoxauc(rank_sums, group_sizes(labels))
        assert_equals_reference(statistics, presto_reference(values, labels))
    # The first gene is never expressed: all its cells tie, p is 1 (presto's newest, scipy's).
    assert np.all(wilcoxauc(sums[1], group_sizes(pair))["pval"][:, 0] == 1)


def test_the_formula_write_out_equals_scipy(counts_and_clusters):
    """The faster reference the task tests use for many groups is scipy's test."""
    counts, clusters = counts_and_clusters
    values = log_normalised_anndata(counts).X.toarray().astype(np.float64)
    labels = clusters.astype(np.int32)
    labels[::7] = NO_GROUP
    formula, scipy_test = presto_formula(values, labels), presto_reference(values, labels)
    for name, expected in scipy_test.items():
        np.testing.assert_allclose(formula[name], expected, rtol=1e-9, atol=1e-15)


def test_the_tie_term_counts_every_tie_block_and_the_zeros(counts_and_clusters):
    counts, clusters = counts_and_clusters
    values = log_normalised_anndata(counts).X.toarray()
    labels = labelling(
        [np.flatnonzero(clusters == 0), np.flatnonzero(clusters == 2)], len(clusters)
    )
    (rank_sums,) = blockwise(counts, [labels], 2)
    grouped = values[labels != NO_GROUP]
    expected = []
    for gene in grouped.T:
        _, tied = np.unique(gene, return_counts=True)
        expected.append(np.sum(tied.astype(np.float64) ** 3 - tied))
    np.testing.assert_array_equal(rank_sums["ties"], expected)
    assert rank_sums["ties"].min() > 0  # every gene has zeros in more than one cell


def test_the_base_table_is_group_zero_with_no_zero_adjusted_p():
    statistics = {
        "pval": np.array([[0.0, 0.5], [0.0, 0.5]]),
        "padj": np.array([[0.0, 0.5], [0.0, 0.5]]),
        "logFC": np.array([[1.0, -1.0], [-1.0, 1.0]]),
        "pct_in": np.array([[50.0, 10.0], [5.0, 1.0]]),
        "pct_out": np.array([[5.0, 1.0], [50.0, 10.0]]),
        "auc": np.array([[0.9, 0.4], [0.1, 0.6]]),
    }
    table = base_table(statistics)
    assert table["p_val"].tolist() == [0.0, 0.5]
    assert table["p_val_adj"].tolist() == [2.2250738585072014e-308, 0.5]
    assert table["pct_1"].tolist() == [50.0, 10.0] and table["pct_2"].tolist() == [5.0, 1.0]
    assert table["logFC"].tolist() == [1.0, -1.0] and table["auc"].tolist() == [0.9, 0.4]


def test_top_markers_equal_the_platforms_steps_with_ties():
    rng = np.random.default_rng(3)
    shape = (5, 300)
    statistics = {
        # Few distinct values: ties in p and logFC across groups and genes.
        "pval": rng.choice([0.0, 1e-8, 1e-3, 0.2], size=shape),
        "logFC": rng.choice([-0.5, 0.0, 0.4, 0.8, 1.2], size=shape),
        "auc": rng.choice([0.2, 0.3, 0.7], size=shape),
        "pct_in": rng.choice([10.0, 20.0, 60.0], size=shape),
        "pct_out": rng.choice([30.0, 70.0, 80.0], size=shape),
    }
    for n_genes in (1, 3, 50):
        expected = pandas_top_markers(statistics, n_genes)
        assert top_markers(statistics, n_genes).tolist() == expected
        assert len(expected) == len(set(expected)) > 0


def test_sampling_caps_groups_with_a_fixed_seed():
    labels = np.repeat(np.array([0, 1, NO_GROUP, 2], dtype=np.int32), [50, 7, 20, 30])
    sampled = sample_groups(labels, 10)
    assert np.bincount(sampled[sampled != NO_GROUP]).tolist() == [10, 7, 10]
    assert np.array_equal(sampled[50:57], labels[50:57])  # a small group is kept whole
    assert np.all(np.isin(np.flatnonzero(sampled == 0), np.arange(50)))
    assert np.array_equal(sample_groups(labels, 10), sampled)
    assert sample_groups(labels, 50) is labels


def test_labelling_last_set_wins_and_empty_groups_are_dropped():
    labels = labelling([np.array([0, 1, 2]), np.array([], dtype=np.int64), np.array([2, 3])], 6)
    assert labels.tolist() == [0, 0, 2, 2, NO_GROUP, NO_GROUP]
    renumbered, present = present_groups(labels)
    assert renumbered.tolist() == [0, 0, 1, 1, NO_GROUP, NO_GROUP]
    assert present.tolist() == [0, 2]
