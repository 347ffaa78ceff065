"""The hand-over between attempts: a TrainingJob's next attempt starts only once every pod of its earlier
attempts is gone from the API (deleted, not merely terminating). Pure: pods and conditions in, decisions out.

Why: a deleted trainer pod gets SIGTERM, and its rank 0 then commits a checkpoint and writes progress.json
before it exits; with S3 that can take a good part of terminationGracePeriodSeconds. An attempt started
meanwhile would resume from an older checkpoint and write runs/<run-id>/ alongside the old one (progress,
metrics, checkpoint retention deleting the other's checkpoints). The kubelet removes a pod only after its
containers have stopped, so once the pods are gone nobody else writes the run and the newest committed
checkpoint includes the SIGTERM one.

What holds the next attempt back: a pod of an earlier attempt that is terminating (deletionTimestamp set) or
still live (pending or running; the reconciler deletes it). A pod that finished and was not deleted holds up
nothing: its process has exited (failed single-node pods are kept for their logs). A pod owned by an earlier
TrainingJob of the same name (deleted and created again before the garbage collector removed its pods) holds
up every attempt, whatever its state: its name may be the one the new attempt needs, and adopting it would
track the old job's trainer.

A pod still there `margin` seconds after its grace period is reported stuck: the kubelet kills the containers
when the grace period ends and then removes the pod within seconds, so its node is not answering (powered off,
partitioned). The operator keeps waiting and says so in the condition and a Warning Event, and does not force-
delete: it cannot tell a dead node from a partitioned one whose trainer may still be writing. Kubernetes itself
leaves this to a human (`kubectl delete pod --grace-period=0 --force`) or to its pod garbage collector, which
removes the pods of a Node object that is deleted or tainted node.kubernetes.io/out-of-service.
"""

from __future__ import annotations

from typing import Any

from tunewright_operator.pods import LABEL_ATTEMPT
from tunewright_operator.podstate import terminating, unfinished
from tunewright_operator.status import condition, now, seconds_between, set_condition

CONDITION = "PreviousAttemptGone"
WAITING = "WaitingForPreviousAttempt"
STUCK = "PodsStuckTerminating"
GONE = "PodsGone"
DEFAULT_GRACE_SECONDS = 30  # Kubernetes' default terminationGracePeriodSeconds


def _attempt(pod: dict[str, Any]) -> int | None:
    value = (pod["metadata"].get("labels") or {}).get(LABEL_ATTEMPT, "")
    return int(value) if value.isdigit() else None


def owned_by(pod: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in pod["metadata"].get("ownerReferences") or [])


def blocking(pods: list[dict[str, Any]], attempt: int, uid: str) -> list[dict[str, Any]]:
    """The pods that must be gone before attempt `attempt` of the TrainingJob with `uid` starts, by name."""
    def holds(pod: dict[str, Any]) -> bool:
        earlier = (_attempt(pod) or attempt) < attempt
        return not owned_by(pod, uid) or (earlier and (terminating(pod) or unfinished(pod)))
    return sorted((p for p in pods if holds(p)), key=lambda p: p["metadata"]["name"])


def grace_seconds(pods: list[dict[str, Any]]) -> int:
    """The longest grace period among the pods: the one given at deletion, else the pod's own."""
    def grace(pod: dict[str, Any]) -> int:
        given = pod["metadata"].get("deletionGracePeriodSeconds")
        own = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
        return int(given if given is not None else own if own is not None else DEFAULT_GRACE_SECONDS)
    return max((grace(p) for p in pods), default=DEFAULT_GRACE_SECONDS)


def waiting(conditions: list[dict[str, Any]] | None, names: list[str], attempt: int, grace: int,
            margin: float) -> tuple[list[dict[str, Any]], str, bool]:
    """The conditions and message while attempt `attempt` waits for `names`, and whether they just turned stuck.

    The wait started when the condition last turned False (its lastTransitionTime), so an operator restart
    neither resets nor loses it."""
    old = condition({"conditions": conditions}, CONDITION)
    since = old["lastTransitionTime"] if old and old["status"] == "False" else now()
    pods = f"pod {names[0]}" if len(names) == 1 else f"pods {', '.join(names)}"
    limit = grace + margin
    if (seconds_between(since, now()) or 0.0) > limit:
        reason = STUCK
        message = (f"attempt {attempt} waits for {pods} of an earlier attempt, still terminating more than "
                   f"{limit:.0f} s (grace period {grace} s + {margin:.0f} s) after deletion: the node may be "
                   f"unreachable. If it is gone for good, force-delete them (kubectl delete pod --grace-period=0 "
                   f"--force {' '.join(names)}); the attempt then starts")
    else:
        reason = WAITING
        message = (f"attempt {attempt} waits for {pods} of an earlier attempt to terminate (the trainer commits "
                   f"a checkpoint on SIGTERM; grace period {grace} s), then resumes from the latest checkpoint")
    turned_stuck = reason == STUCK and (old is None or old.get("reason") != STUCK)
    return set_condition(conditions, CONDITION, False, reason, message), message, turned_stuck


def gone(conditions: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """The conditions once the earlier attempt's pods are gone (the condition appears only after a wait)."""
    if condition({"conditions": conditions}, CONDITION) is None:
        return conditions
    return set_condition(conditions, CONDITION, True, GONE, "the earlier attempt's pods are gone")
