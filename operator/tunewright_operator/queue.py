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
whatever the number of jobs, and finished jobs and pods are only looked up, never iterated: a decision's work
grows with the unfinished jobs, not with every job ever run. Nothing lives only in memory: a restarted operator
rebuilds the indexes from the watch's initial listing before any handler runs (Kopf waits for every index), and
the API stays the truth: the reconciler reads the job itself before acting on it. The one thing the watch cannot
know yet is a pod this process has just created: `Indexed.created` counts it as busy until the pod indexes show
it (else two quick admissions could both see the same free slot).
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import Counter
from collections.abc import Callable, Container, Iterable, Mapping
from typing import Any, NamedTuple, Protocol

from tunewright_operator.models import TERMINAL_PHASES
from tunewright_operator.pods import owner_job
from tunewright_operator.podstate import terminating, unfinished
from tunewright_operator.status import SYNCED

Key = tuple[str, str]


def key(tj: dict[str, Any]) -> Key:
    return tj["metadata"].get("namespace", ""), tj["metadata"]["name"]


def _status(tj: Mapping[str, Any]) -> dict[str, Any]:
    return tj.get("status") or {}


def phase(tj: Mapping[str, Any]) -> str:
    return _status(tj).get("phase") or "Pending"


def is_finished(tj: Mapping[str, Any]) -> bool:
    return phase(tj) in TERMINAL_PHASES


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
    succeeded: Container[Key]  # (namespace, pod name) of the trainer pods that have Succeeded


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
    if not free:  # most decisions in a backlog: no sorting
        return []
    return [key(tj) for tj in heapq.nsmallest(free, (tj for tj in tjs if is_waiting(tj) and key(tj) not in taken),
                                              key=order)]


def position(tjs: list[dict[str, Any]], job: Key) -> int | None:
    """1-based place of a waiting job in the queue (counted, not sorted)."""
    mine = next((tj for tj in tjs if key(tj) == job and is_waiting(tj)), None)
    if mine is None:
        return None
    rank = order(mine)
    return 1 + sum(1 for tj in tjs if is_waiting(tj) and order(tj) < rank)


def phases(tjs: list[dict[str, Any]]) -> Counter[str]:
    return Counter(phase(tj) for tj in tjs)


# --- the caches ---

def summary(tj: Mapping[str, Any]) -> dict[str, Any]:
    """What the queue needs of a TrainingJob (what the TrainingJob index holds, ~200 bytes a job)."""
    meta, spec, status = tj["metadata"], tj.get("spec") or {}, tj.get("status") or {}
    return {"metadata": {k: meta.get(k) for k in ("namespace", "name", "creationTimestamp", "deletionTimestamp")},
            "spec": {k: spec[k] for k in ("priority", "suspend") if k in spec},
            "status": {**{k: status[k] for k in ("phase", "podName", "runId") if k in status},
                       "conditions": [c for c in status.get("conditions") or [] if c.get("type") == SYNCED]}}


class State(Protocol):
    """The queue's inputs: the unfinished TrainingJobs (summaries; finished ones may be among them), the number of
    TrainingJobs in each phase, and what the trainer pods show (`Pods`)."""

    def jobs(self) -> list[dict[str, Any]]: ...

    def phases(self) -> Counter[str]: ...

    def pods(self) -> Pods: ...

    def created(self, pod: dict[str, Any]) -> None: ...


class Listed:
    """The inputs listed from the API on each call: for a Reconciler without the operator's indexes (tests that
    drive it directly against an in-memory API)."""

    def __init__(self, list_jobs: Callable[[], list[dict[str, Any]]], list_pods: Callable[[], list[dict[str, Any]]]):
        self._list_jobs, self._list_pods = list_jobs, list_pods

    def jobs(self) -> list[dict[str, Any]]:
        return self._list_jobs()

    def phases(self) -> Counter[str]:
        return phases(self._list_jobs())

    def pods(self) -> Pods:
        return pod_view(self._list_pods())

    def created(self, pod: dict[str, Any]) -> None:
        pass


class _Succeeded:
    """`(namespace, pod name) in it`: that trainer pod has Succeeded (a lookup in the finished pods' index)."""

    def __init__(self, finished: Mapping[Key, Iterable[tuple[str, str]]]):
        self._finished = finished

    def __contains__(self, pod: object) -> bool:
        return any(phase == "Succeeded" for phase, _ in list(self._finished.get(pod, ())))  # type: ignore[call-overload]


class Indexed:
    """The inputs from four Kopf indexes (handlers.py): unfinished TrainingJobs' summaries by (namespace, name) (a
    finished job leaves it), every TrainingJob by phase (for the gauges: counted, not iterated), the uids of
    unfinished trainer pods by (namespace, controlling job), and the (phase, uid) of finished trainer pods by
    (namespace, pod name). `ready` is set once Kopf has populated them (the first handler call after a start)."""

    GRACE = 120.0  # seconds a created pod counts as busy without the pod indexes showing it

    def __init__(self) -> None:
        self._jobs: Mapping[Key, Iterable[dict[str, Any]]] = {}
        self._phases: Mapping[str, Iterable[None]] = {}
        self._unfinished: Mapping[Key, Iterable[str]] = {}
        self._finished: Mapping[Key, Iterable[tuple[str, str]]] = {}
        self._created: dict[str, tuple[Key, Key, float]] = {}  # pod uid -> (job, (namespace, pod name), when)
        self._seen: dict[str, tuple[str | None, bool]] = {}  # pod uid -> (phase, terminating) last handled
        self._lock = threading.Lock()
        self.ready = threading.Event()

    def attach(self, indexes: Mapping[str, Any]) -> None:
        """Called by every handler with Kopf's indexes (the same objects each time); marks the caches ready."""
        self._jobs, self._phases = indexes["trainingjob_index"], indexes["trainingjob_phase_index"]
        self._unfinished, self._finished = indexes["unfinished_pod_index"], indexes["finished_pod_index"]
        self.ready.set()

    # Kopf updates the indexes in its event loop's thread while handler threads read them: each read below copies
    # a dict's keys or values in one C call (list() of a dict iterator), which the loop cannot interleave with.
    def jobs(self) -> list[dict[str, Any]]:
        """The unfinished TrainingJobs."""
        return [tj for k in list(self._jobs) for tj in list(self._jobs.get(k, ()))]

    def phases(self) -> Counter[str]:
        return Counter({name: len(list(self._phases.get(name, ()))) for name in list(self._phases)})

    def pods(self) -> Pods:
        owners = set(self._unfinished)
        with self._lock:
            now = time.monotonic()
            self._created = {uid: entry for uid, entry in self._created.items()
                             if not self._indexed(uid, *entry[:2]) and now - entry[2] < self.GRACE}
            owners.update(job for job, _, _ in self._created.values())
        return Pods(owners, _Succeeded(self._finished))

    def _indexed(self, uid: str, job: Key, pod: Key) -> bool:
        return uid in list(self._unfinished.get(job, ())) or \
            any(known == uid for _, known in list(self._finished.get(pod, ())))

    def created(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if meta.get("uid") and unfinished(pod):
            namespace = meta.get("namespace", "")
            with self._lock:
                self._created[meta["uid"]] = ((namespace, owner_job(meta) or ""), (namespace, meta["name"]),
                                              time.monotonic())
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
