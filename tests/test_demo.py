"""`python -m worker demo` on a fresh machine: every task answered, pictures drawn."""

import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import embedded_default_environment
from worker.tasks import TASKS, V2_TASKS

PICTURES = ("umap.png", "pca.png", "tsne.png", "marker_heatmap.png", "trajectory.png")
# ScTypeAnnotate needs a marker database the demo does not have.
V2_IN_THE_DEMO = set(V2_TASKS) - {"ScTypeAnnotate"}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_answers_every_task_and_draws_its_pictures(tmp_path):
    environment = embedded_default_environment()
    out_dir = tmp_path / "pictures"
    demo = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--out", str(out_dir)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=840,
    )
    output = f"{demo.stdout}\n{demo.stderr}"
    assert demo.returncode == 0, output

    summary_lines = demo.stdout.splitlines()
    for task in TASKS:
        assert any(line.startswith(task) for line in summary_lines), f"{task}:\n{output}"
    for task in V2_IN_THE_DEMO:
        assert any(line.startswith(f"v2 {task}") for line in summary_lines), f"{task}:\n{output}"
    for name in PICTURES:
        assert str(out_dir / name) in demo.stdout
        with Image.open(out_dir / name) as picture:
            assert picture.format == "PNG"
            colours = picture.convert("RGB").getcolors(maxcolors=1 << 24)
        assert len(colours) > 8, f"{name} is nearly blank"
