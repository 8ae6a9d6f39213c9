"""Streaming readers of source count matrices: Cell Ranger mtx folders and h5, and h5ad.

`open_source` finds the samples under a path and reads their names; each sample's counts are
then streamed in row blocks, never loaded whole.
"""

import fsspec
import numpy as np

from worker.errors import SourceNotFound, UnsupportedFormat
from worker.store.sources.hdf5 import hdf5_format, open_10x_h5, open_h5ad, open_hdf5
from worker.store.sources.mtx import MATRIX_FILES, open_mtx
from worker.store.sources.sample import SourceSample

__all__ = ["FORMATS", "SourceSample", "open_source"]

FORMATS = ("auto", "10x_mtx", "10x_h5", "h5ad")
_HDF5_SUFFIXES = (".h5", ".h5ad")


def open_source(
    fs: fsspec.AbstractFileSystem, path: str, format: str = "auto"
) -> list[SourceSample]:
    """The samples at `path`: one matrix (folder or file), or one per subfolder, by name.

    Raises SourceNotFound when the path or a needed file is missing, UnsupportedFormat when what
    is there cannot be read as `format` or its samples do not share their genes.
    """
    if format not in FORMATS:
        raise UnsupportedFormat(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    path = path.rstrip("/")
    if not fs.exists(path):
        raise SourceNotFound(f"{path} does not exist")
    if fs.isfile(path):
        stem = _basename(path).rsplit(".", 1)[0]
        return [_open_hdf5_sample(fs, path, stem, format)]
    entries = fs.ls(path, detail=True)
    sample = _open_folder(fs, path, entries, format)
    if sample is not None:
        return [sample]
    folders = sorted(entry["name"].rstrip("/") for entry in entries if entry["type"] == "directory")
    samples = []
    for folder in folders:
        sample = _open_folder(fs, folder, fs.ls(folder, detail=True), format)
        if sample is None:
            raise SourceNotFound(f"{folder} holds no matrix (matrix.mtx[.gz], .h5 or .h5ad)")
        samples.append(sample)
    if not samples:
        raise SourceNotFound(
            f"{path} holds no matrix (matrix.mtx[.gz], .h5 or .h5ad) and no sample folders"
        )
    _check_same_genes(samples)
    return samples


def _open_folder(fs, folder: str, entries: list[dict], format: str) -> SourceSample | None:
    """The sample of a folder holding matrix files or one HDF5 file, or None if it has neither."""
    files = {
        _basename(entry["name"]): entry["name"] for entry in entries if entry["type"] == "file"
    }
    name = _basename(folder)
    if any(file in files for file in MATRIX_FILES):
        if format not in ("auto", "10x_mtx"):
            raise UnsupportedFormat(f"{folder} holds a Cell Ranger matrix folder, not {format}")
        return open_mtx(fs, files, name)
    hdf5_files = sorted(path for file, path in files.items() if file.endswith(_HDF5_SUFFIXES))
    if len(hdf5_files) > 1:
        raise UnsupportedFormat(
            f"{folder} holds several HDF5 files ({', '.join(map(_basename, hdf5_files))}); "
            "give the path of one"
        )
    return _open_hdf5_sample(fs, hdf5_files[0], name, format) if hdf5_files else None


def _open_hdf5_sample(fs, path: str, name: str, format: str) -> SourceSample:
    with open_hdf5(fs, path) as file:
        found = hdf5_format(file, path)
        if format not in ("auto", found):
            raise UnsupportedFormat(f"{path} is {found}, not {format}")
        opener = open_10x_h5 if found == "10x_h5" else open_h5ad
        return opener(fs, path, file, name)


def _check_same_genes(samples: list[SourceSample]) -> None:
    first = samples[0]
    for sample in samples[1:]:
        if not np.array_equal(sample.gene_ids, first.gene_ids):
            raise UnsupportedFormat(
                f"samples {first.name} ({first.n_genes} genes) and {sample.name} "
                f"({sample.n_genes} genes) have different gene ids or gene order; every sample "
                "must have the same genes in the same order"
            )


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]
