"""The sample the local default is seeded with, and its experiment prepared at first start."""

import logging
import sys

from distributed import Client
from tqdm import tqdm

from worker.datasets.synthetic import make_pbmc_sample, write_10x_mtx
from worker.jsonio import loads
from worker.settings import Settings
from worker.store.build import PROGRESS_TOPIC, STAGES
from worker.store.locations import filesystem, read_manifest
from worker.tasks import TASKS
from worker.tasks.base import TaskContext
from worker.tasks.dispatch import Inline, run_task, validated

log = logging.getLogger(__name__)

SAMPLE_BUCKET = "biomage-source-originals"
SAMPLE_PREFIX = "pbmc_count_matrices/hg19"
SAMPLE_EXPERIMENT = "5e959f9c9f4b120771249001"


def seed_sample(settings: Settings, client: Client, *, prepare: bool = True) -> None:
    """Write the PBMC-like sample to the source bucket and prepare its experiment, once."""
    if SAMPLE_BUCKET not in settings.source_buckets:
        log.warning("%s is not an allowed source bucket: sample not seeded", SAMPLE_BUCKET)
        return
    fs, _ = filesystem("s3://", settings.aws)
    folder = f"{SAMPLE_BUCKET}/{SAMPLE_PREFIX}"
    if not fs.exists(f"{folder}/matrix.mtx.gz"):
        write_10x_mtx(fs, folder, make_pbmc_sample(), version=3)
        print(f"seeded the sample at s3://{folder}/", flush=True)
    if not prepare or read_manifest(settings.store_root, SAMPLE_EXPERIMENT, settings.aws):
        return
    print(f"preparing the sample experiment {SAMPLE_EXPERIMENT} ...", flush=True)
    body = {
        "name": "PrepareExperiment",
        "sourceBucket": SAMPLE_BUCKET,
        "sourceMatrixPath": SAMPLE_PREFIX,
    }
    context = TaskContext.for_experiment(settings, SAMPLE_EXPERIMENT)
    task, validated_body = validated(TASKS, body)
    with tqdm(total=len(STAGES), unit="stage", desc="prepare", file=sys.stdout) as bar:

        def show(event: tuple) -> None:
            progress = event[1]
            if "stagesDone" in progress:
                bar.update(progress["stagesDone"] - bar.n)
            else:
                bar.set_postfix_str(f"{progress['done']}/{progress['total']} cells")

        client.subscribe_topic(PROGRESS_TOPIC, show)
        try:
            result = client.submit(
                run_task, task, validated_body, context, Inline(), settings.shows_tracebacks
            ).result()
        finally:
            client.unsubscribe_topic(PROGRESS_TOPIC)
    if result.code is not None:
        raise RuntimeError(f"preparing the sample failed: {result.body.decode()}")
    summary = loads(result.body)
    print(
        f"prepared {SAMPLE_EXPERIMENT}: {summary['cells']} cells x {summary['genes']} genes "
        f"in {summary['seconds']:.1f}s",
        flush=True,
    )
