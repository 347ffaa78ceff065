"""Kubernetes for tests: one real control plane per test session (support/control_plane.py) with the CRDs from
crds/ applied as a user applies them, and a fresh namespace per test (Pod Security "restricted" enforced).

Without the binaries (`make control-plane` builds them with Go) the tests that need a cluster are skipped with
one line saying so; under CI (`CI` set) they fail instead, so a broken build never passes as a green run.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.control_plane import ControlPlane, missing_binaries

CRDS = Path(__file__).resolve().parents[2] / "crds"


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition", interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    missing = missing_binaries()
    if missing:
        reason = f"no {', '.join(missing)} in .bin/ (`make control-plane` builds them from Go modules)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane")).start()
    try:
        plane.kubectl("apply", "--server-side", "-f", str(CRDS))
        plane.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    except BaseException:
        print(plane.tails())
        plane.stop()
        raise
    yield plane
    plane.stop()


_namespaces = itertools.count(1)


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test; the control plane's log tails are printed when the test fails."""
    name = f"test-{next(_namespaces)}"
    control_plane.kubectl("create", "namespace", name)
    control_plane.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    yield name
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(control_plane.tails())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


__all__ = ["control_plane", "namespace", "wait_for"]
