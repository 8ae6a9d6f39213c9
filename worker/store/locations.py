"""Where experiment stores live: the root (an `s3://` bucket or a local folder), one prefix per
experiment holding versions, and the manifest whose writing makes a version current."""

import contextlib
import secrets
import warnings
from datetime import UTC, datetime

import anndata as ad
import fsspec
from zarr.storage import FsspecStore, LocalStore

from worker.jsonio import dumps, loads
from worker.settings import AwsSettings

# The store is zarr format 3 with sharded arrays; anndata still writes format 2 unless told.
ad.settings.zarr_write_format = 3
ad.settings.auto_shard_zarr_v3 = True
# Consolidated metadata is what lets a store open in one read; zarr warns it is not in the spec.
warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)

STORE_FORMAT = 1
MANIFEST = "manifest.json"
# Written first into a version being built, and deleted once it is complete: a version that
# still holds it and is not current is the leftover of a build that died.
BUILDING = "_building"


def filesystem(url: str, aws: AwsSettings) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and path of a `s3://...` URL or a local path."""
    options = aws.storage_options() if url.startswith("s3://") else {}
    return fsspec.url_to_fs(url, **options)


def zarr_store(url: str, aws: AwsSettings, *, read_only: bool):
    if url.startswith("s3://"):
        return FsspecStore.from_url(url, storage_options=aws.storage_options(), read_only=read_only)
    return LocalStore(url.removeprefix("file://"), read_only=read_only)


def experiment_url(store_root: str, experiment_id: str) -> str:
    return f"{store_root.rstrip('/')}/{experiment_id}"


def version_url(store_root: str, experiment_id: str, version: str) -> str:
    return f"{experiment_url(store_root, experiment_id)}/{version}"


def new_version_name() -> str:
    """A version name that sorts by creation time."""
    return f"v{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{secrets.token_hex(4)}"


def read_manifest(store_root: str, experiment_id: str, aws: AwsSettings) -> dict | None:
    fs, path = filesystem(f"{experiment_url(store_root, experiment_id)}/{MANIFEST}", aws)
    # s3fs sizes a file from its cached listing: one made before the manifest existed hides it.
    fs.invalidate_cache(path)
    try:
        return loads(fs.cat_file(path))
    except FileNotFoundError:
        return None


def publish_version(
    store_root: str, experiment_id: str, version: str, aws: AwsSettings, provenance: dict
) -> str:
    """Make `version` current by writing the manifest; returns the version's URL.

    Versions older than the one it replaces are deleted (the one replaced stays for readers
    that opened it moments ago), and so is any version left half-built by a build that died.
    """
    fs, base_path = filesystem(experiment_url(store_root, experiment_id), aws)
    previous = read_manifest(store_root, experiment_id, aws)
    manifest = {"format": STORE_FORMAT, "version": version, **provenance}
    fs.pipe_file(f"{base_path}/{MANIFEST}", dumps(manifest))
    keep = {version, previous["version"] if previous else None}
    for stale in list_versions(store_root, experiment_id, aws):
        if stale not in keep and stale < version:
            delete_version(store_root, experiment_id, stale, aws)
    return version_url(store_root, experiment_id, version)


def list_versions(store_root: str, experiment_id: str, aws: AwsSettings) -> list[str]:
    fs, base_path = filesystem(experiment_url(store_root, experiment_id), aws)
    try:
        entries = fs.ls(base_path, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    names = (entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries)
    return sorted(name for name in names if name.startswith("v"))


def sweep_abandoned_versions(
    store_root: str, experiment_id: str, aws: AwsSettings, stale_after_s: float
) -> list[str]:
    """Delete the versions left by builds that died: not current, and marked as being built
    longer ago than `stale_after_s` (a live build renews its mark). Returns their names."""
    manifest = read_manifest(store_root, experiment_id, aws)
    current = manifest["version"] if manifest else None
    now = datetime.now(UTC)
    abandoned = []
    for version in list_versions(store_root, experiment_id, aws):
        fs, mark = filesystem(f"{version_url(store_root, experiment_id, version)}/{BUILDING}", aws)
        try:
            marked_at = datetime.fromisoformat(fs.cat_file(mark).decode())
        except FileNotFoundError:
            continue
        if version != current and (now - marked_at).total_seconds() > stale_after_s:
            delete_version(store_root, experiment_id, version, aws)
            abandoned.append(version)
    return abandoned


def delete_version(store_root: str, experiment_id: str, version: str, aws: AwsSettings) -> None:
    fs, path = filesystem(version_url(store_root, experiment_id, version), aws)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)
