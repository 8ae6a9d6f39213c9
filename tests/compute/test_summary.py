"""The Cellenics v2 expression statistics from the nonzeros alone, against numpy on the dense
column (the platform's R: colMeans, the n - 1 deviation, colMins, type-7 colQuantiles)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.compute.arithmetic import log10_counts
from worker.compute.summary import expression_stats, sparse_quantile
from worker.jsonio import dumps

# Columns of log-normalised-like values: zeros (any share of them, so the 0.95 quantile falls
# among the zeros or the nonzeros) and positive float32 values with ties.
nonzero_values = st.one_of(st.sampled_from([0.5, 1.25, 2.0]), st.floats(2**-10, 8, width=32))
columns = st.integers(1, 120).flatmap(
    lambda n: st.tuples(st.integers(0, n), st.lists(nonzero_values, min_size=n, max_size=n)).map(
        lambda drawn: [0.0] * (n - drawn[0]) + drawn[1][: drawn[0]]
    )
)


@settings(max_examples=100, deadline=None)
@given(columns, st.sampled_from([0.0, 0.5, 0.95, 0.96, 0.99, 1.0]))
def test_the_quantile_is_numpys_on_the_dense_column(values, probability):
    column = np.array(values, dtype=np.float32)
    nonzeros = column[column != 0]
    quantile = sparse_quantile(nonzeros, len(column), probability)
    expected = np.quantile(column, probability)
    assert quantile == expected and quantile.dtype == expected.dtype


@settings(max_examples=100, deadline=None)
@given(columns)
def test_the_stats_are_the_platforms_formula_on_the_dense_column(values):
    column = np.array(values, dtype=np.float32)
    stats = expression_stats(column[column != 0], len(column))

    probability = 0.95
    cap = np.quantile(column, probability)
    while cap == 0 and probability + 0.01 <= 1:
        probability += 0.01
        cap = np.quantile(column, probability)
    assert stats["truncatedMax"] == cap
    assert stats["truncatedMin"] == column.min()
    np.testing.assert_allclose(stats["rawMean"], column.astype(np.float64).mean(), rtol=1e-12)
    if len(column) > 1:
        expected = column.astype(np.float64).std(ddof=1)
        np.testing.assert_allclose(stats["rawStdev"], expected, rtol=1e-9, atol=1e-12)
    else:
        assert np.isnan(stats["rawStdev"])


def test_log10_counts_writes_null_for_an_empty_cell():
    assert dumps(log10_counts(np.array([0, 1, 1000], dtype=np.int32))) == b"[null,0.0,3.0]"
