"""Write requirements.txt: the pinned third-party packages that the image needs, which are the
runtime part of constraints.txt (the lock also pins the dev and local extras: pytest, moto, ...).

pip resolves `worker` without extras against the lock (a dry run: nothing is installed), so the
set is exactly what `pip install -c constraints.txt .` would install on this Python, the image's.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = (
    "# The image's third-party packages, pinned: the runtime part of constraints.txt.\n"
    "# Written by `make lock` (.ci/runtime_requirements.py); do not edit by hand.\n"
)


def resolve_runtime() -> list[str]:
    """`name==version` of every package `worker` needs at run time, sorted by name."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
             "--report", str(report), "-c", str(ROOT / "constraints.txt"), str(ROOT)],
            check=True,
        )  # fmt: skip
        installs = json.loads(report.read_text())["install"]
    pins = {item["metadata"]["name"]: item["metadata"]["version"] for item in installs}
    pins.pop("worker")
    names = sorted(pins, key=str.lower)
    return [f"{name}=={pins[name]}" for name in names]


def main() -> None:
    (ROOT / "requirements.txt").write_text(HEADER + "\n".join(resolve_runtime()) + "\n")


if __name__ == "__main__":
    main()
