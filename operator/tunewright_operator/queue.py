"""The queue, recomputed from the listed TrainingJobs and trainer pods each time (nothing in memory to lose).

Busy: admitted (phase Running: its pods run, or its next attempt waits for the previous one's pods to go) or
owning a trainer pod that has not finished (also one the status does not know of yet, after a restart, or one
still terminating). Waiting: not started (or suspended and resumed), not suspended, not finished, not busy.
Waiting jobs start in order of spec.priority (higher first), then creation time; a job whose last reconcile
failed (e.g. its Secret is missing) goes behind the others until it recovers, so it never blocks the queue.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tunewright_operator.models import TERMINAL_PHASES
from tunewright_operator.pods import owner_job
from tunewright_operator.podstate import unfinished
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


def pod_owners(pods: list[dict[str, Any]]) -> set[Key]:
    """Jobs that own a trainer pod which has not finished (running, pending or terminating)."""
    return {(p["metadata"].get("namespace", ""), job) for p in pods
            if unfinished(p) and (job := owner_job(p["metadata"]))}


def busy(tjs: list[dict[str, Any]], owners: set[Key] | None = None) -> set[Key]:
    return {key(tj) for tj in tjs if is_active(tj)} | ((owners or set()) & {key(tj) for tj in tjs})


def admissible(tjs: list[dict[str, Any]], max_active: int, owners: set[Key] | None = None) -> list[Key]:
    """The waiting jobs that may start now, in order."""
    taken = busy(tjs, owners)
    free = max(0, max_active - len(taken))
    return [key(tj) for tj in waiting(tjs) if key(tj) not in taken][:free]


def position(tjs: list[dict[str, Any]], job: Key) -> int | None:
    """1-based place of a waiting job in the queue."""
    keys = [key(tj) for tj in waiting(tjs)]
    return keys.index(job) + 1 if job in keys else None


def phases(tjs: list[dict[str, Any]]) -> Counter[str]:
    return Counter(_status(tj).get("phase") or "Pending" for tj in tjs)
