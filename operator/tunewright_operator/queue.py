"""The queue: which TrainingJobs hold a slot and which wait, from the TrainingJobs and trainer pods.

Busy: admitted (phase Running: its pods run, or its next attempt waits for the previous one's pods to go) unless
the pod its status names has Succeeded, or owning a trainer pod that has not finished (also one the status does not
know of yet, after a restart, one still terminating, or one whose TrainingJob is already deleted: a slot is held
until the job's pods are gone). A pod that has Succeeded holds no GPU, so the slot goes to the next job as soon as
the pod's phase shows it, not after the finished job's completion (reading its result, creating its Adapter,
its final status: a dozen requests); the pod's phase is in the API, so a restarted operator counts the same.
Waiting: not started (or suspended and resumed), not suspended, not finished, not busy. Waiting jobs start in
order of spec.priority (higher first), then creation time; a job whose last reconcile failed (e.g. its Secret is
missing) goes behind the others until it recovers, so it never blocks the queue. Pods count for the job that
controls them (ownerReference), whatever its name's label value.

The inputs come from watch-driven caches (Kopf indexes, `Indexed`), so a queue decision costs no API request
whatever the number of jobs. Nothing lives only in memory: a restarted operator rebuilds the indexes from the
watch's initial listing before any handler runs (Kopf waits for every index), and the API stays the truth: the
reconciler reads the job itself before acting on it. The one thing the watch cannot know yet is a pod this
process has just created: `Indexed.created` counts it as busy until the pod index shows it (else two quick
admissions could both see the same free slot).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol

from tunewright_operator.models import TERMINAL_PHASES
from tunewright_operator.pods import owner_job
from tunewright_operator.podstate import terminating, unfinished
from tunewright_operator.status import SYNCED

Key = tuple[str, str]


def key(tj: dict[str, Any]) -> Key:
    return tj["metadata"].get("namespace", ""), tj["metadata"]["name"]


def _status(tj: dict[str, Any]) -> dict[str, Any]:
    return tj.get("status") or {}


def is_active(tj: dict[str, Any]) -> bool:
    return _status(tj).get("phase") == "Running"


def is_waiting(tj: dict[str, Any]) -> bool:
    status = _status(tj)
    return (status.get("phase") not in (*TERMINAL_PHASES, "Running") and not status.get("podName")
            and not (tj.get("spec") or {}).get("suspend") and not tj["metadata"].get("deletionTimestamp"))


def _priority(tj: dict[str, Any]) -> int:
    value = (tj.get("spec") or {}).get("priority", 0)
    return value if isinstance(value, int) else 0


def _failing(tj: dict[str, Any]) -> bool:
    """Its last reconcile failed (status.SYNCED is False): it waits behind the jobs that can start."""
    return any(c.get("type") == SYNCED and c.get("status") == "False" for c in _status(tj).get("conditions") or [])


def order(tj: dict[str, Any]) -> tuple[bool, int, str, str, str]:
    meta = tj["metadata"]
    return _failing(tj), -_priority(tj), meta.get("creationTimestamp") or "", meta.get("namespace", ""), meta["name"]


def waiting(tjs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((tj for tj in tjs if is_waiting(tj)), key=order)


class Pods(NamedTuple):
    """What the queue needs of the trainer pods."""

    owners: set[Key]  # jobs that own a trainer pod which has not finished (running, pending or terminating)
    succeeded: set[Key]  # (namespace, pod name) of the trainer pods that have Succeeded


NO_PODS = Pods(set(), set())


def pod_view(pods: Iterable[dict[str, Any]]) -> Pods:
    view = Pods(set(), set())
    for pod in pods:
        meta = pod["metadata"]
        if unfinished(pod):
            if job := owner_job(meta):
                view.owners.add((meta.get("namespace", ""), job))
        elif (pod.get("status") or {}).get("phase") == "Succeeded":
            view.succeeded.add((meta.get("namespace", ""), meta["name"]))
    return view


def holds_slot(tj: dict[str, Any], succeeded: set[Key]) -> bool:
    """Admitted, and the pod its status names (the first of a multi-node attempt; the others count as owners
    while they run) has not Succeeded."""
    return is_active(tj) and (key(tj)[0], _status(tj).get("podName")) not in succeeded


def busy(tjs: list[dict[str, Any]], pods: Pods = NO_PODS) -> set[Key]:
    """Jobs holding a slot: admitted ones whose trainer is not done, and owners of unfinished pods even when
    their TrainingJob is gone."""
    return {key(tj) for tj in tjs if holds_slot(tj, pods.succeeded)} | pods.owners


def admissible(tjs: list[dict[str, Any]], max_active: int, pods: Pods = NO_PODS) -> list[Key]:
    """The waiting jobs that may start now, in order."""
    taken = busy(tjs, pods)
    free = max(0, max_active - len(taken))
    return [key(tj) for tj in waiting(tjs) if key(tj) not in taken][:free]


def position(tjs: list[dict[str, Any]], job: Key) -> int | None:
    """1-based place of a waiting job in the queue."""
    keys = [key(tj) for tj in waiting(tjs)]
    return keys.index(job) + 1 if job in keys else None


def phases(tjs: list[dict[str, Any]]) -> Counter[str]:
    return Counter(_status(tj).get("phase") or "Pending" for tj in tjs)


# --- the caches ---

def summary(tj: Mapping[str, Any]) -> dict[str, Any]:
    """What the queue needs of a TrainingJob (what the TrainingJob index holds, ~200 bytes a job)."""
    meta, spec, status = tj["metadata"], tj.get("spec") or {}, tj.get("status") or {}
    return {"metadata": {k: meta.get(k) for k in ("namespace", "name", "creationTimestamp", "deletionTimestamp")},
            "spec": {k: spec[k] for k in ("priority", "suspend") if k in spec},
            "status": {**{k: status[k] for k in ("phase", "podName", "runId") if k in status},
                       "conditions": [c for c in status.get("conditions") or [] if c.get("type") == SYNCED]}}


def pod_summary(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What the queue needs of a trainer pod (what the pod index holds)."""
    meta = pod["metadata"]
    return {"metadata": {"name": meta["name"], "namespace": meta.get("namespace", ""), "uid": meta.get("uid"),
                         "labels": dict(meta.get("labels") or {}),
                         "ownerReferences": [dict(r) for r in meta.get("ownerReferences") or []],
                         "deletionTimestamp": meta.get("deletionTimestamp")},
            "status": {"phase": (pod.get("status") or {}).get("phase")}}


class State(Protocol):
    """The queue's inputs: every TrainingJob (summaries) and what the trainer pods show (`Pods`)."""

    def jobs(self) -> list[dict[str, Any]]: ...

    def pods(self) -> Pods: ...

    def created(self, pod: dict[str, Any]) -> None: ...


class Listed:
    """The inputs listed from the API on each call: for a Reconciler without the operator's indexes (tests that
    drive it directly against an in-memory API)."""

    def __init__(self, list_jobs: Callable[[], list[dict[str, Any]]], list_pods: Callable[[], list[dict[str, Any]]]):
        self._list_jobs, self._list_pods = list_jobs, list_pods

    def jobs(self) -> list[dict[str, Any]]:
        return self._list_jobs()

    def pods(self) -> Pods:
        return pod_view(self._list_pods())

    def created(self, pod: dict[str, Any]) -> None:
        pass


class Indexed:
    """The inputs from two Kopf indexes: TrainingJob summaries by (namespace, name), trainer pod summaries by
    (namespace, controlling job). `ready` is set once Kopf has populated them (the first handler call after a
    start)."""

    GRACE = 120.0  # seconds a created pod counts as busy without the pod index showing it

    def __init__(self) -> None:
        self._jobs: Mapping[Key, Iterable[dict[str, Any]]] = {}
        self._pods: Mapping[Key, Iterable[dict[str, Any]]] = {}
        self._created: dict[str, tuple[Key, float]] = {}  # pod uid -> (job, when)
        self._seen: dict[str, tuple[str | None, bool]] = {}  # pod uid -> (phase, terminating) last handled
        self._lock = threading.Lock()
        self.ready = threading.Event()

    def attach(self, jobs: Mapping[Key, Iterable[dict[str, Any]]], pods: Mapping[Key, Iterable[dict[str, Any]]]
               ) -> None:
        """Called by every handler with Kopf's indexes (the same objects each time); marks the caches ready."""
        self._jobs, self._pods = jobs, pods
        self.ready.set()

    def jobs(self) -> list[dict[str, Any]]:
        return [tj for store in list(self._jobs.values()) for tj in list(store)]

    def pods(self) -> Pods:
        listed = [pod for store in list(self._pods.values()) for pod in list(store)]
        view = pod_view(listed)
        seen = {pod["metadata"]["uid"] for pod in listed}
        with self._lock:
            now = time.monotonic()
            self._created = {uid: (job, at) for uid, (job, at) in self._created.items()
                             if uid not in seen and now - at < self.GRACE}
            view.owners.update(job for job, _ in self._created.values())
        return view

    def created(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if meta.get("uid") and unfinished(pod):
            with self._lock:
                self._created[meta["uid"]] = ((meta.get("namespace", ""), owner_job(meta) or ""), time.monotonic())
        self.changed(pod)

    def changed(self, pod: dict[str, Any], gone: bool = False) -> bool:
        """Whether a pod event matters to the reconciler: a new phase, a deletion starting, the pod gone (not the
        binding, status details, or the echo of a pod this process created); remembers the pod's state."""
        uid = pod["metadata"]["uid"]
        state: tuple[str | None, bool] = ((pod.get("status") or {}).get("phase"), terminating(pod))
        with self._lock:
            old = self._seen.pop(uid, None) if gone else self._seen.get(uid)
            if not gone:
                self._seen[uid] = state
        return gone or old != state
