"""Admission under concurrency, against an in-memory API: jobs are admitted at the same time (one job's pod
creation does not hold up another's), and never more than maxConcurrentJobs, however the threads interleave."""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import pytest

from tunewright.data import synthetic
from tunewright.data.store import DatasetStore
from tunewright.storage import open_storage
from tunewright_operator.kube import TRAININGJOBS
from tunewright_operator.reconcile import Reconciler
from tunewright_operator.settings import Settings


class SlowKube:
    """Jobs and pods as dicts; creating a pod waits until `release` is set (a slow API server)."""

    def __init__(self, names: list[str]):
        self.jobs = {n: {"apiVersion": "tunewright.dev/v1alpha1", "kind": "TrainingJob",
                         "metadata": {"name": n, "namespace": "ml", "uid": f"uid-{n}", "generation": 1,
                                      "creationTimestamp": f"2026-01-01T00:00:0{i}Z"},
                         "spec": {"dataset": {"id": "songs"}}} for i, n in enumerate(names)}
        self.pods: dict[str, dict[str, Any]] = {}
        self.creating: list[str] = []  # pods whose creation has begun
        self.release = threading.Event()
        self._lock = threading.Lock()

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return copy.deepcopy(self.jobs.get(name)) if plural == TRAININGJOBS else None

    def list(self, plural: str, namespaces: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(tj) for tj in self.jobs.values()] if plural == TRAININGJOBS else []

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        with self._lock:
            current = self.jobs[name].setdefault("status", {})
            current.update(copy.deepcopy(status))
            for key in [k for k, v in current.items() if v is None]:
                del current[key]

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return copy.deepcopy(self.pods.get(name))

    def list_pods(self, namespaces: tuple[str, ...], selector: str) -> list[dict[str, Any]]:
        terms = [term.split("=", 1) for term in selector.split(",")]
        with self._lock:
            return [copy.deepcopy(p) for p in self.pods.values()
                    if all(p["metadata"]["labels"].get(t[0]) == t[1] if len(t) == 2 else t[0] in p["metadata"]["labels"]
                           for t in terms)]

    def ensure_pod(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.creating.append(body["metadata"]["name"])
        assert self.release.wait(10), "pod creation never released"
        with self._lock:
            pod = {**copy.deepcopy(body), "status": {"phase": "Pending"}}
            pod["metadata"]["namespace"] = namespace  # as the API server sets it
            return copy.deepcopy(self.pods.setdefault(body["metadata"]["name"], pod))

    def ensure_config_map(self, namespace: str, body: dict[str, Any]) -> None:
        pass

    def delete_service(self, namespace: str, name: str) -> None:
        pass


@pytest.fixture
def storage(tmp_path: Path) -> str:
    uri = f"file://{tmp_path / 'store'}"
    rows = synthetic.write_jsonl(synthetic.rated_rows(prompts=4), tmp_path / "songs.jsonl")
    DatasetStore(open_storage(uri)).import_file("songs", rows, "rated")
    return uri


def admit_all(kube: SlowKube, storage: str, slots: int) -> list[threading.Thread]:
    rec = Reconciler(kube, Settings(storage=storage, max_concurrent_jobs=slots), lambda *_: None)  # type: ignore[arg-type]
    threads = [threading.Thread(target=rec.reconcile, args=("ml", name)) for name in kube.jobs]
    for thread in threads:
        thread.start()
    return threads


def wait_until(check: Any, seconds: float = 5.0) -> bool:
    done = threading.Event()
    for _ in range(int(seconds / 0.02)):
        if check():
            return True
        done.wait(0.02)
    return False


def test_jobs_are_admitted_at_the_same_time(storage: str) -> None:
    kube = SlowKube(["a", "b", "c"])
    threads = admit_all(kube, storage, slots=3)
    # all three pod creations are under way at once: none waits for another's answer
    assert wait_until(lambda: len(kube.creating) == 3), kube.creating
    kube.release.set()
    for thread in threads:
        thread.join(10)
    assert sorted(kube.pods) == ["a-a1", "b-a1", "c-a1"]
    assert {tj["status"]["phase"] for tj in kube.jobs.values()} == {"Running"}


def test_a_job_being_started_holds_its_slot(storage: str) -> None:
    kube = SlowKube(["a", "b", "c"])
    threads = admit_all(kube, storage, slots=2)
    assert wait_until(lambda: len(kube.creating) == 2)
    assert wait_until(lambda: sum((tj.get("status") or {}).get("phase") == "Queued" for tj in kube.jobs.values()) == 1)
    kube.release.set()
    for thread in threads:
        thread.join(10)
    assert len(kube.pods) == 2 and len(kube.creating) == 2
    phases = sorted(tj["status"]["phase"] for tj in kube.jobs.values())
    assert phases == ["Queued", "Running", "Running"]


def test_a_started_job_is_not_written_again_when_its_pod_shows_up_pending(storage: str) -> None:
    kube = SlowKube(["a"])
    kube.release.set()
    rec = Reconciler(kube, Settings(storage=storage), lambda *_: None)  # type: ignore[arg-type]
    rec.reconcile("ml", "a")
    status = kube.jobs["a"]["status"]
    running = next(c for c in status["conditions"] if c["type"] == "Running")
    assert (status["phase"], running["status"], running["reason"]) == ("Running", "False", "PodsPending")
    writes = []
    kube.patch_status = lambda *args: writes.append(args)  # type: ignore[method-assign]
    rec.reconcile("ml", "a")  # the pod's ADDED event: Pending, as the start already recorded
    assert writes == []


def test_a_kick_starts_the_jobs_it_admits_side_by_side(storage: str) -> None:
    kube = SlowKube(["a", "b", "c", "d"])
    for tj in kube.jobs.values():
        tj["status"] = {"phase": "Queued"}
    rec = Reconciler(kube, Settings(storage=storage, max_concurrent_jobs=3), lambda *_: None)  # type: ignore[arg-type]
    kicks = [threading.Thread(target=rec.kick) for _ in range(2)]  # e.g. two jobs finished at once
    for kick in kicks:
        kick.start()
    assert wait_until(lambda: len(kube.creating) == 3), kube.creating  # none waits for another's pod
    kube.release.set()
    for kick in kicks:
        kick.join(10)
    assert sorted(kube.pods) == ["a-a1", "b-a1", "c-a1"]  # the first three in order; the fourth still waits
    assert kube.jobs["d"]["status"]["phase"] == "Queued"


class Died(BaseException):
    """The operator process dies here (not an error a reconcile step records)."""


def test_a_start_whose_status_write_was_lost_is_picked_up_without_a_second_pod(storage: str) -> None:
    kube = SlowKube(["a", "b"])
    kube.release.set()
    settings = Settings(storage=storage, max_concurrent_jobs=1)

    def die(*_: Any) -> None:
        raise Died

    kube.patch_status = die  # type: ignore[method-assign]
    with pytest.raises(Died):  # a-a1 is created, then the operator dies before recording it
        Reconciler(kube, settings, lambda *_: None).reconcile("ml", "a")  # type: ignore[arg-type]
    assert list(kube.pods) == ["a-a1"] and "status" not in kube.jobs["a"]
    del kube.patch_status  # the restarted operator
    restarted = Reconciler(kube, settings, lambda *_: None)  # type: ignore[arg-type]
    restarted.reconcile("ml", "b")  # the slot is a's: its pod runs although no status says so
    restarted.reconcile("ml", "a")
    assert list(kube.pods) == ["a-a1"]
    status = kube.jobs["a"]["status"]
    assert (status["phase"], status.get("podName")) == ("Running", "a-a1"), status
    assert kube.jobs["b"]["status"]["phase"] == "Queued"
