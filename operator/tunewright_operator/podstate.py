"""What happened to a trainer pod: running, done, or failed — and whether it was disrupted or crashed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Pod status reasons and DisruptionTarget condition reasons that mean "not the trainer's fault".
DISRUPTION_REASONS = ("Evicted", "Preempted")


def terminating(pod: dict[str, Any]) -> bool:
    """Deleted and not yet gone (deletionTimestamp set): its trainer has been sent SIGTERM or soon will."""
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def unfinished(pod: dict[str, Any]) -> bool:
    """Neither Succeeded nor Failed: its trainer may still run (or has yet to), terminating or not."""
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


@dataclass(frozen=True)
class PodState:
    phase: str  # Pending, Running, Succeeded, Failed, Terminating, Unknown
    reason: str = ""  # Evicted/Preempted/<DisruptionTarget reason> for disruptions, else TrainerError/OOMKilled
    disrupted: bool = False
    exit_code: int | None = None
    message: str = ""

    def describe(self) -> str:
        code = f"exit code {self.exit_code}" if self.exit_code is not None else ""
        detail = "; ".join(p for p in (code, self.message) if p)
        return f"{self.reason}: {detail}" if detail else self.reason


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return term
    return {}


def _disruption(pod: dict[str, Any]) -> str | None:
    status = pod.get("status", {})
    if status.get("reason") in DISRUPTION_REASONS:
        return status["reason"]
    for cond in status.get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            return cond.get("reason") or "DisruptionTarget"
    return None


# Why a pod stays Pending that time alone will not fix: a container the kubelet cannot create, or no node that
# fits (the scheduler's condition).
STUCK_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                 "CreateContainerConfigError", "CreateContainerError")


def stuck(pod: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, message) when a Pending pod waits for something that needs a person: an image that cannot be
    pulled, a missing Secret or ConfigMap, no node that fits."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            return waiting["reason"], waiting.get("message") or ""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and \
                cond.get("reason") == "Unschedulable":
            return "Unschedulable", cond.get("message") or ""
    return None


def pod_state(pod: dict[str, Any]) -> PodState:
    if terminating(pod):
        return PodState("Terminating")
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Pending" and (why := stuck(pod)):
        return PodState("Pending", why[0], message=why[1])
    if phase != "Failed":
        return PodState(phase)
    term = _terminated(pod)
    disruption = _disruption(pod)
    trainer = (term.get("message") or "").strip()
    if disruption:  # what the node said, then what the trainer said
        message = "; ".join(m for m in ((status.get("message") or "").strip(), trainer) if m)
        return PodState("Failed", disruption, True, term.get("exitCode"), message)
    reason = "OOMKilled" if term.get("reason") == "OOMKilled" else "TrainerError"
    return PodState("Failed", reason, False, term.get("exitCode"), trainer or status.get("message") or
                    term.get("reason", ""))
