"""SimplePPT's sums over the soft assignment, taken a block of points at a time, against the
whole points x centres matrices (monocle3's calc_principal_graph, written out)."""

import numpy as np
from scipy.spatial.distance import cdist

from worker.compute.trajectory import SIGMA, soft_assignment_sums


def test_soft_assignment_sums_by_blocks_equal_the_whole_matrices():
    rng = np.random.default_rng(3)
    points = rng.normal(size=(1003, 2))
    centres = points[rng.choice(len(points), 40, replace=False)] + 0.01
    distances = cdist(points, centres, "sqeuclidean")
    row_min = distances.min(axis=1, keepdims=True)
    weights = np.exp(-(distances - row_min) / SIGMA)
    row_sums = weights.sum(axis=1, keepdims=True)
    assignment = weights / row_sums

    totals, weighted, log_term = soft_assignment_sums(points, centres, SIGMA, block_points=97)

    np.testing.assert_allclose(totals, assignment.sum(axis=0), rtol=1e-10)
    np.testing.assert_allclose(weighted, points.T @ assignment, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(log_term, np.sum(np.log(row_sums) - row_min / SIGMA), rtol=1e-10)
