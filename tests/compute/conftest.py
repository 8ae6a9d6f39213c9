import numpy as np
import pytest
from scipy import sparse

from tests.compute.synthetic import negative_binomial_counts


@pytest.fixture(scope="session")
def counts_and_clusters() -> tuple[sparse.csr_matrix, np.ndarray]:
    return negative_binomial_counts(700, 400)
