"""Results cached inside a published store version (embeddings, doublet scores).

A cached element is one zarr array in a single chunk, so on S3 its values are one object: a
reader sees one whole write or none. Its `completed_at` attribute is written last, and readers
take only arrays that have it. Writers never delete, so concurrent identical requests at worst
both compute and both write a whole array. Elements added after the build are missing from
the root's consolidated metadata, so they are opened by path, never through the root group.
"""

from datetime import UTC, datetime

import numpy as np
import zarr
from zarr.errors import ContainsArrayError, NodeNotFoundError

from worker.settings import AwsSettings
from worker.store.experiment import ExperimentStore, zarr_store
from worker.store.writer import COMPRESSOR

COMPLETED = "completed_at"
# Written as an anndata array element, so that anndata reads it should it list the group.
ARRAY_ENCODING = {"encoding-type": "array", "encoding-version": "0.2.0"}


def read_cached(store: ExperimentStore, path: str) -> np.ndarray | None:
    """The values of the cached array at `path` in the store if it is complete, else None."""
    try:
        array = zarr.open_array(store.group.store, path=path, mode="r")
    except NodeNotFoundError:
        return None
    return array[...] if COMPLETED in array.attrs else None


def write_cached(store: ExperimentStore, aws: AwsSettings, path: str, values: np.ndarray) -> None:
    """Store `values` at `path` in the store's version, then mark the array complete."""
    writable = zarr_store(store.url, aws, read_only=False)
    try:
        array = zarr.create_array(
            writable,
            name=path,
            shape=values.shape,
            dtype=values.dtype,
            chunks=values.shape,
            compressors=COMPRESSOR,
            attributes=ARRAY_ENCODING,
        )
    except ContainsArrayError:
        # Another request is writing it, or one failed midway: same shape, so write over it.
        array = zarr.open_array(writable, path=path, mode="r+")
    array[...] = values
    array.update_attributes({COMPLETED: datetime.now(UTC).isoformat()})
