"""Building an experiment store version from source samples, streaming, in stages (see
`pipeline`)."""

from worker.store.build.pipeline import build_store
from worker.store.build.plan import PROGRESS_TOPIC, STAGES, BuildOptions, BuildPlan, BuildSummary

__all__ = ["PROGRESS_TOPIC", "STAGES", "BuildOptions", "BuildPlan", "BuildSummary", "build_store"]
