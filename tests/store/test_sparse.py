"""The sparse reader: slices of sharded vectors equal what was written, on a local folder and on
S3, and a warm read on S3 is one GET per run of nearby chunks in a shard, all at once."""

import numpy as np
import pytest
import zarr
from scipy import sparse

from tests.conftest import make_settings
from worker.local.aws_proxy import AwsProxy
from worker.store.locations import zarr_store
from worker.store.sparse import CompressedMatrix, ShardedVector, read_slices
from worker.store.writer import create_sparse_group, create_vector

SHARD, CHUNK = 256, 16


def written_vector(group: zarr.Group, name: str, values: np.ndarray) -> zarr.Array:
    array = create_vector(group, name, len(values), values.dtype, SHARD, CHUNK)
    array[:] = values
    return array


def sparse_values(rng, length: int) -> np.ndarray:
    """Values with runs of zeros a chunk long or more, so some chunks are never written."""
    values = rng.integers(1, 1000, length).astype(np.float32)
    for start in rng.integers(0, length, 8):
        values[start : start + 3 * CHUNK] = 0
    values[SHARD : 2 * SHARD] = 0  # a whole shard never written
    return values


SLICES = [
    (0, 0), (0, 1), (5, 9), (0, CHUNK), (CHUNK, 2 * CHUNK), (3, 2 * CHUNK + 5),
    (SHARD - 3, SHARD + 3), (SHARD, 2 * SHARD), (SHARD - 1, 3 * SHARD + 7), (0, 1000),
    (999, 1000), (1000, 1000),
]  # fmt: skip


@pytest.fixture(params=["local", "s3"])
def group(request, tmp_path, emulator):
    if request.param == "local":
        return zarr.open_group(tmp_path / "store", mode="w", zarr_format=3)
    settings = make_settings(emulator.url)
    url = f"{settings.store_root}/sparse-reader-{tmp_path.name}"
    return zarr.open_group(zarr_store(url, settings.aws, read_only=False), mode="w")


def test_slices_equal_the_written_values(group):
    rng = np.random.default_rng(0)
    values = sparse_values(rng, 1000)
    indices = rng.integers(0, 2**31 - 1, 1000).astype(np.int32)
    vector = ShardedVector(written_vector(group, "values", values))
    index_vector = ShardedVector(written_vector(group, "indices", indices))
    parts = [slice(start, stop) for start, stop in SLICES]
    read = read_slices(
        [(vector, part) for part in parts] + [(index_vector, part) for part in parts]
    )
    expected = [values[part] for part in parts] + [indices[part] for part in parts]
    for got, wanted in zip(read, expected, strict=True):
        assert got.dtype == wanted.dtype
        np.testing.assert_array_equal(got, wanted)
    # Read again, from the shard indexes it keeps.
    (again,) = read_slices([(vector, slice(0, 1000))])
    np.testing.assert_array_equal(again, values)


@pytest.mark.parametrize("encoding", ["csr_matrix", "csc_matrix"])
def test_compressed_matrix_reads_equal_scipy(group, encoding):
    matrix = sparse.random(300, 40, density=0.3, format="csr", random_state=2, dtype=np.float32)
    matrix = matrix.tocsc() if encoding == "csc_matrix" else matrix
    matrix.data = np.ceil(matrix.data * 100)
    stored = create_sparse_group(group, "m", encoding, matrix.shape, matrix.nnz, SHARD, CHUNK)
    for name in ("data", "indices", "indptr"):
        stored[name][:] = getattr(matrix, name)
    n_major = matrix.shape[0] if encoding == "csr_matrix" else matrix.shape[1]
    reader = CompressedMatrix(stored)
    for start, stop in [(0, n_major), (3, 4), (7, 7), (n_major - 5, n_major)]:
        expected = matrix[start:stop] if encoding == "csr_matrix" else matrix[:, start:stop]
        got = reader.major_range(start, stop)
        assert (got != expected).nnz == 0 and got.shape == expected.shape
        given = reader.major_range(start, stop, np.asarray(matrix.indptr[start : stop + 1]))
        assert (given != expected).nnz == 0
    positions = np.array([5, 0, n_major - 1, 5])
    got = reader.majors(positions)
    expected = matrix[positions] if encoding == "csr_matrix" else matrix[:, positions]
    assert (got != expected).nnz == 0


def test_a_warm_read_on_s3_is_one_get_per_run_of_chunks(emulator, tmp_path):
    proxy = AwsProxy(emulator.url)
    try:
        settings = make_settings(proxy.url)
        url = f"{settings.store_root}/sparse-requests-{tmp_path.name}"
        group = zarr.open_group(zarr_store(url, settings.aws, read_only=False), mode="w")
        values = np.arange(1, 4 * SHARD + 1, dtype=np.float32)
        vector = ShardedVector(written_vector(group, "values", values))
        proxy.forget()
        # Chunks 0 and 2 of shard 0 (one GET: they are close), and chunk 1 of shard 2.
        parts = [
            slice(0, 5),
            slice(2 * CHUNK, 2 * CHUNK + 5),
            slice(2 * SHARD + CHUNK, 2 * SHARD + CHUNK + 1),
        ]
        read_slices([(vector, part) for part in parts])
        first = [request.key for request in proxy.requests_of("s3")]
        # The two shards' indexes, then one GET per shard.
        assert sorted(first) == sorted([f"/{url[5:]}/values/c/0", f"/{url[5:]}/values/c/2"] * 2)
        proxy.forget()
        got = read_slices([(vector, part) for part in parts])
        assert len(proxy.requests_of("s3")) == 2
        for part, values_read in zip(parts, got, strict=True):
            np.testing.assert_array_equal(values_read, values[part])
    finally:
        proxy.stop()
