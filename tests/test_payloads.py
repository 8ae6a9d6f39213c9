"""The sample payloads shipped in conf/payloads are valid requests for their tasks."""

from pathlib import Path

import pytest

from worker.settings import load_settings
from worker.tasks import TASKS
from worker.tasks.dispatch import validated
from worker.transport.protocol import parse_message
from worker.transport.seed import SeedProtocol

PAYLOADS = sorted((Path(__file__).resolve().parents[1] / "conf" / "payloads").glob("*.json"))
SEED = SeedProtocol(load_settings({"CLUSTER_ENV": "test"}))


def test_there_is_a_payload_for_every_task():
    names = {parse_message(path.read_text(), [SEED])[1].task_name for path in PAYLOADS}
    assert names == set(TASKS)


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda path: path.stem)
def test_payload_is_a_valid_request(path):
    _, request = parse_message(path.read_text(), [SEED])
    assert request.invalid is None
    task, body = validated(TASKS, request.body)
    assert body.name == task.name
