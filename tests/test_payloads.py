"""The sample payloads shipped in conf/payloads are valid requests for their tasks."""

from pathlib import Path

import pytest

from worker.messages import parse_request
from worker.tasks import find_task

PAYLOADS = sorted((Path(__file__).resolve().parents[1] / "conf" / "payloads").glob("*.json"))


def test_there_is_a_payload_for_every_task():
    from worker.tasks import TASKS

    names = {parse_request(path.read_text()).raw["body"]["name"] for path in PAYLOADS}
    assert names == set(TASKS)


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda path: path.stem)
def test_payload_is_a_valid_request(path):
    request = parse_request(path.read_text())
    assert request.invalid is None
    task, body = find_task(request.envelope.body)
    assert body.name == task.name
