"""The Dockerfile, checked without a docker engine: linted with hadolint, its layers in the order
that keeps a code change small, and its requirements.txt the runtime part of the lock."""

import fnmatch
import re
import shlex
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).with_name("hadolint")
# Installed into the virtual environment by the Makefile, which installs everything else with it.
UV = Path(sys.executable).with_name("uv")
# The roots of the dev and local extras: none of them may reach the image.
NOT_IN_IMAGE = {"pytest", "pytest-timeout", "hypothesis", "ruff", "moto", "kubernetes-validate"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        joined.append(pending + stripped)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined]


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, each starting with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions(text):
        if instruction[0] == "FROM":
            result.append([])
        result[-1].append(instruction)
    return result


def image_environment() -> dict[str, str]:
    """The ENV of the final stage, as the image's processes see it."""
    environment: dict[str, str] = {}
    for name, arguments in stages(DOCKERFILE.read_text())[-1]:
        if name == "ENV":
            for pair in shlex.split(arguments):
                key, value = pair.split("=", 1)
                environment[key] = value
    return environment


def image_user() -> tuple[int, int]:
    """The final stage's USER as (uid, gid)."""
    users = [arguments for name, arguments in stages(DOCKERFILE.read_text())[-1] if name == "USER"]
    uid, gid = users[-1].split(":")
    return int(uid), int(gid)


def requirement_pins(path: Path) -> dict[str, str]:
    """{canonical name: version} of a pip freeze-style file."""
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_hadolint_passes_the_dockerfile():
    result = subprocess.run(
        [str(HADOLINT), str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_known_mistake(tmp_path):
    """The linter reads the file: an apt-get install that pulls recommended packages fails."""
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        DOCKERFILE.read_text().replace("--no-install-recommends ", "", 1), encoding="utf-8"
    )
    result = subprocess.run(
        [str(HADOLINT), str(broken)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DL3015" in result.stdout


def test_dependencies_are_installed_before_any_code_is_copied():
    """The dependencies stage reads requirements.txt alone, and the final stage takes its venv
    before the worker package: a code change leaves the 800 MB layer as it was."""
    dependencies, package, final = stages(DOCKERFILE.read_text())
    copied = [arguments for name, arguments in dependencies if name == "COPY"]
    assert copied == ["requirements.txt /tmp/requirements.txt"]
    installs = [
        arguments for name, arguments in dependencies if name == "RUN" and "pip" in arguments
    ]
    assert any("--no-deps --requirement /tmp/requirements.txt" in run for run in installs)

    package_copies = [arguments for name, arguments in package if name == "COPY"]
    assert any(arguments.startswith("worker/") for arguments in package_copies)

    final_steps = [f"{name} {arguments}" for name, arguments in final]
    venv_at = next(i for i, step in enumerate(final_steps) if "--from=dependencies" in step)
    code_at = next(i for i, step in enumerate(final_steps) if "from=package" in step)
    assert venv_at < code_at
    assert "--no-deps" in final_steps[code_at]
    # Nothing of the source tree is copied into the final stage but the configuration.
    assert [step for step in final_steps if step.startswith("COPY") and "--from" not in step] == [
        "COPY conf/ /app/conf/"
    ]


def test_dockerignore_admits_what_the_build_copies_and_nothing_else():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def admitted(path: str) -> bool:
        # Docker's rule: the last matching pattern wins; "!" admits, a top folder admits below.
        verdict = True
        for pattern in patterns:
            negated = pattern.startswith("!")
            bare = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, bare) or path.startswith(bare + "/"):
                verdict = negated
        return verdict

    sources = [
        source
        for name, arguments in instructions(DOCKERFILE.read_text())
        if name == "COPY" and "--from" not in arguments
        for source in arguments.split()[:-1]
    ]
    assert sources
    for source in sources:
        assert admitted(source.rstrip("/")), source
    assert admitted("worker/loop.py")
    for path in ("tests/test_chart.py", ".venv/bin/python", ".git/HEAD", "benchmarks/data/x"):
        assert not admitted(path), path


def test_image_runs_as_the_numeric_user_the_chart_expects():
    values = yaml.safe_load((ROOT / "chart" / "values.yaml").read_text())
    uid, gid = image_user()
    assert uid != 0
    assert (
        values["podSecurityContext"]["runAsUser"],
        values["podSecurityContext"]["runAsGroup"],
    ) == (
        uid,
        gid,
    )


def image_python() -> str:
    """The image's Python, major.minor, from its base image tag."""
    return re.search(r"FROM python:(\d+\.\d+)", DOCKERFILE.read_text())[1]


def runtime_closure() -> dict[str, str]:
    """{canonical name: version} of every distribution `worker` needs without extras, walked
    through the installed packages' metadata, markers evaluated for the image's Python. A
    package needed there but not installed here (another Python) counts at its lock version."""
    lock = requirement_pins(ROOT / "constraints.txt")
    marker_environment = {"python_version": image_python()}
    found: dict[str, str] = {}
    pending = [(canonicalize_name("worker"), frozenset())]
    seen = set()
    while pending:
        name, extras = pending.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            found[name] = lock[name]
            continue
        found[name] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            wanted = requirement.marker is None or any(
                requirement.marker.evaluate(marker_environment | {"extra": extra})
                for extra in extras | {""}
            )
            if wanted:
                pending.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    found.pop("worker")
    return found


def test_requirements_are_the_runtime_part_of_the_lock():
    """requirements.txt (written by `make lock`) holds exactly what `worker` needs at run time,
    at the lock's versions: regenerate it with `make lock` when this fails."""
    requirements = requirement_pins(ROOT / "requirements.txt")
    lock = requirement_pins(ROOT / "constraints.txt")
    assert requirements == runtime_closure()
    assert all(lock[name] == version for name, version in requirements.items())
    assert not NOT_IN_IMAGE & requirements.keys()


def test_requirements_resolve_to_themselves_against_the_lock(tmp_path):
    """A dry-run install of requirements.txt with its dependencies into an empty target (nothing
    installed) resolves to exactly the packages it lists: the image's --no-deps install misses
    nothing. uv resolves as pip does, from the same index, in a second where pip took 45 s."""
    result = subprocess.run(
        [UV, "pip", "install", "--dry-run", "--target", str(tmp_path / "target"),
         "--python", sys.executable,
         "-r", str(ROOT / "requirements.txt"), "-c", str(ROOT / "constraints.txt")],
        capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    resolved = {}
    for line in result.stderr.splitlines():
        if line.startswith(" + "):
            name, version = line[3:].split("==")
            resolved[canonicalize_name(name)] = version
    assert resolved == requirement_pins(ROOT / "requirements.txt")


def test_writable_locations_of_the_image_are_under_tmp():
    """HOME, numba's cache and matplotlib's config go to /tmp, which the chart mounts writable."""
    environment = image_environment()
    for variable in ("HOME", "NUMBA_CACHE_DIR", "MPLCONFIGDIR"):
        assert re.fullmatch(r"/tmp(/.*)?", environment[variable]), variable
