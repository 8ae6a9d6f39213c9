"""The Helm chart in chart/, checked without a Kubernetes cluster."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.timeout(60)

CHART = Path(__file__).parent.parent / "chart"

VALUES_PATH = re.compile(r"\.Values((?:\.\w+)+)")
INCLUDED_NAME = re.compile(r'\b(?:include|template)\s+"([^"]+)"')
DEFINED_NAME = re.compile(r'\bdefine\s+"([^"]+)"')


def template_sources() -> dict[str, str]:
    """Every template and _helpers.tpl, by file name."""
    return {path.name: path.read_text() for path in sorted((CHART / "templates").iterdir())}


def test_chart_metadata_parses():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "worker"
    assert chart["version"]


def test_every_values_path_in_the_templates_exists():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    referenced = {
        (name, match[1].lstrip("."))
        for name, text in template_sources().items()
        for match in VALUES_PATH.finditer(text)
    }
    assert referenced, "the pattern found no .Values reference: has the syntax changed?"

    missing = []
    for name, path in sorted(referenced):
        node = values
        for key in path.split("."):
            if not isinstance(node, dict) or key not in node:
                missing.append(f"{name}: .Values.{path}")
                break
            node = node[key]
    assert not missing


def test_templates_include_only_defined_helpers():
    sources = template_sources().values()
    defined = {name for text in sources for name in DEFINED_NAME.findall(text)}
    included = {name for text in sources for name in INCLUDED_NAME.findall(text)}
    assert included
    assert included <= defined, f"undefined helpers: {sorted(included - defined)}"


def helm(*args: str) -> str:
    result = subprocess.run(["helm", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_helm_lints_and_renders_the_deployments_and_service():
    if shutil.which("helm") is None:
        pytest.skip("helm is not installed on this machine: lint and template not checked")
    helm("lint", str(CHART))
    rendered = helm("template", "test", str(CHART), "--set", "aws.existingSecret=aws-keys")

    documents = {
        (doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(rendered) if doc
    }
    assert {
        ("Deployment", "test-worker"),
        ("Deployment", "test-worker-scheduler"),
        ("Deployment", "test-worker-dask-workers"),
        ("Service", "test-worker-scheduler"),
    } <= documents.keys()

    def container(deployment: str) -> dict:
        return documents["Deployment", deployment]["spec"]["template"]["spec"]["containers"][0]

    worker = container("test-worker")
    env = {variable["name"]: variable["value"] for variable in worker["env"]}
    assert env["DASK_SCHEDULER_ADDRESS"] == "tcp://test-worker-scheduler:8786"
    assert worker["envFrom"] == [{"secretRef": {"name": "aws-keys"}}]

    dask_worker = container("test-worker-dask-workers")
    assert dask_worker["args"][:3] == ["dask", "worker", "tcp://test-worker-scheduler:8786"]
    memory_limit = dask_worker["args"][dask_worker["args"].index("--memory-limit") + 1]
    assert memory_limit == dask_worker["resources"]["limits"]["memory"]
