"""An operator crash at every point of a multi-node attempt's failure: afterwards the failure is counted once,
no pod of the failed attempt is left running, and the next attempt starts once (or, with no retries left, the
job fails once and starts nothing).

The reconciler runs against an in-memory API so that the crash can land before each single call that changes
something, which the end-to-end tests (real API server, real processes) cannot place. Between the crash and the restart
the "kubelet" finishes every deleted pod: the worst case, where a restarted operator sees only pods gone.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest

from tunewright_operator import multinode
from tunewright_operator.kube import TRAININGJOBS
from tunewright_operator.reconcile import Reconciler
from tunewright_operator.settings import Settings
from tunewright_operator.validation import parse_spec

SETTINGS = Settings(storage="file:///nonexistent")
UID = "0f1e2d3c-aaaa-bbbb-cccc-0123456789ab"


class Crash(Exception):
    """The operator process dies here."""


class MemoryKube:
    """The Kube calls the reconciler makes, on dicts. The `crash_at`-th call that changes something raises
    Crash before it takes effect."""

    def __init__(self, tj: dict[str, Any]):
        self.tj = tj
        self.pods: dict[str, dict[str, Any]] = {}
        self.services: set[str] = set()
        self.changes = 0
        self.crash_at: int | None = None

    def _change(self) -> None:
        self.changes += 1
        if self.changes == self.crash_at:
            raise Crash

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.tj) if plural == TRAININGJOBS and name == self.tj["metadata"]["name"] else None

    def list(self, plural: str, namespaces: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        return [copy.deepcopy(self.tj)] if plural == TRAININGJOBS else []

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._change()
        current = self.tj.setdefault("status", {})
        for key, value in status.items():  # a JSON merge patch: null removes the key
            if value is None:
                current.pop(key, None)
            else:
                current[key] = copy.deepcopy(value)

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.pods.get(name))

    def list_pods(self, namespaces: tuple[str, ...], selector: str) -> list[dict[str, Any]]:
        terms = [term.split("=", 1) for term in selector.split(",")]

        def matches(labels: dict[str, str]) -> bool:
            return all(labels.get(t[0]) == t[1] if len(t) == 2 else t[0] in labels for t in terms)
        return [copy.deepcopy(p) for p in self.pods.values() if matches(p["metadata"]["labels"])]

    def ensure_pod(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._change()
        pod = self.pods.setdefault(body["metadata"]["name"], {**copy.deepcopy(body), "status": {"phase": "Pending"}})
        return copy.deepcopy(pod)

    def delete_pod(self, namespace: str, name: str) -> None:
        self._change()
        if name in self.pods:
            self.pods[name]["metadata"].setdefault("deletionTimestamp", "2026-01-01T00:00:00Z")

    def ensure_service(self, namespace: str, body: dict[str, Any]) -> None:
        self._change()
        self.services.add(body["metadata"]["name"])

    def delete_service(self, namespace: str, name: str) -> None:
        self._change()
        self.services.discard(name)

    def ensure_config_map(self, namespace: str, body: dict[str, Any]) -> None:
        self._change()

    # --- the kubelet ---

    def finish_deleted_pods(self) -> None:
        self.pods = {n: p for n, p in self.pods.items() if not p["metadata"].get("deletionTimestamp")}

    def running(self) -> list[str]:
        return sorted(n for n, p in self.pods.items()
                      if p["status"]["phase"] in ("Pending", "Running") and not p["metadata"].get("deletionTimestamp"))


def failed_attempt(retries: int) -> MemoryKube:
    """A two-node job on attempt 1: node 1's trainer failed, node 0 waits for it in a collective."""
    tj = {"apiVersion": "tunewright.dev/v1alpha1", "kind": "TrainingJob",
          "metadata": {"name": "tune", "namespace": "ml", "uid": UID, "generation": 1},
          "spec": {"dataset": {"id": "songs"}, "resources": {"nodes": 2}, "retries": retries},
          "status": {"phase": "Running", "attempts": 1, "failures": 0, "podName": "tune-a1-0", "runId": "run"}}
    kube = MemoryKube(tj)
    for pod in multinode.pod_set(tj, parse_spec(tj["spec"]), 1, "run", SETTINGS.storage, SETTINGS):
        kube.pods[pod["metadata"]["name"]] = {**pod, "status": {"phase": "Running"}}
    kube.pods["tune-a1-1"]["status"] = {"phase": "Failed", "containerStatuses": [
        {"name": "trainer", "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "boom"}}}]}
    kube.services.add("tune-a1")
    return kube


def reconcile(kube: MemoryKube) -> None:
    Reconciler(kube, SETTINGS, lambda *_: None).reconcile("ml", "tune")  # type: ignore[arg-type]


def run_with_crash(kube: MemoryKube, crash_at: int | None) -> None:
    kube.crash_at = crash_at
    with contextlib.suppress(Crash):
        reconcile(kube)
    kube.crash_at = None
    for _ in range(3):  # the restarted operator, one event after another
        kube.finish_deleted_pods()
        reconcile(kube)


def changes_without_crash(retries: int) -> int:
    kube = failed_attempt(retries)
    reconcile(kube)
    kube.finish_deleted_pods()
    reconcile(kube)
    return kube.changes


@pytest.mark.parametrize("crash_at", [None, *range(1, changes_without_crash(retries=3) + 1)])
def test_a_retry_counts_the_failure_once_whenever_the_operator_crashes(crash_at: int | None) -> None:
    kube = failed_attempt(retries=3)
    run_with_crash(kube, crash_at)
    status = kube.tj["status"]
    assert (status["failures"], status["attempts"], status["podName"]) == (1, 2, "tune-a2-0")
    assert kube.running() == ["tune-a2-0", "tune-a2-1"]  # node 0 of attempt 1 was stopped
    assert kube.services == {"tune-a2"}
    assert "attempt 1 failed" in next(c for c in status["conditions"] if c["type"] == "PodFailed")["message"]


@pytest.mark.parametrize("crash_at", [None, *range(1, changes_without_crash(retries=0) + 1)])
def test_the_last_failure_ends_the_job_once_whenever_the_operator_crashes(crash_at: int | None) -> None:
    kube = failed_attempt(retries=0)
    run_with_crash(kube, crash_at)
    status = kube.tj["status"]
    assert (status["phase"], status["failures"], status["attempts"]) == ("Failed", 1, 1)
    assert kube.running() == []  # node 0 stopped, no attempt 2
    assert "all 0 retries spent" in status["message"]
