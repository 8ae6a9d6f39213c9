"""A new version of an experiment's store, from start to current: versions left by builds that
died are swept, the new one is built beside the current one, published once complete (or
deleted if the build fails), and every Dask worker is told to drop the manifest it holds."""

import logging

from distributed import worker_client

from worker.settings import AwsSettings
from worker.store.build import PROGRESS_TOPIC, BuildOptions, BuildPlan, BuildSummary, build_store
from worker.store.experiment import forget_manifest
from worker.store.locations import (
    delete_version,
    new_version_name,
    publish_version,
    sweep_abandoned_versions,
    version_url,
)
from worker.store.sources import SourceSample

log = logging.getLogger(__name__)


def prepare_version(
    *,
    root: str,
    experiment_id: str,
    aws: AwsSettings,
    samples: list[SourceSample],
    provenance: dict,
) -> tuple[BuildSummary, str]:
    """Build and publish a new version from `samples` (runs on a Dask worker); the build's
    summary and the published store's location. Progress goes to the cluster's event log under
    `PROGRESS_TOPIC`."""
    options = BuildOptions()
    for abandoned in sweep_abandoned_versions(root, experiment_id, aws, 4 * options.heartbeat_s):
        log.info("deleted version %s of %s, left by a build that died", abandoned, experiment_id)
    version = new_version_name()
    plan = BuildPlan(url=version_url(root, experiment_id, version), aws=aws, options=options)
    try:
        with worker_client() as client:
            summary = build_store(
                plan=plan,
                samples=samples,
                client=client,
                provenance=provenance,
                report=lambda progress: client.log_event(
                    PROGRESS_TOPIC, {"experimentId": experiment_id, **progress}
                ),
            )
    except BaseException:
        delete_version(root, experiment_id, version, aws)
        raise
    store = publish_version(root, experiment_id, version, aws, provenance)
    # So that the next query anywhere in the cluster reads the new version rather than wait for
    # the manifest's time to live.
    with worker_client() as client:
        client.run(forget_manifest, root, experiment_id)
    return summary, store
