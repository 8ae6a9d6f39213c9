"""The task tests' Cellenics v2 worker: one per test module, on the session's prepared
experiments."""

import pytest

from tests.tasks.v2_harness import V2Harness


@pytest.fixture(scope="module")
def v2(emulator, redis_server, dask_client, session_settings, prepared_synthetic, prepared_10x):
    harness = V2Harness(emulator.url, redis_server.url, dask_client, session_settings)
    yield harness
    harness.close()
