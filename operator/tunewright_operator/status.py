"""TrainingJob status pieces: conditions, progress fields, timestamps (pure functions on dicts)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tunewright.runs import Progress

# False while the last try to reconcile the job failed (an API or storage error); reason and message say why.
SYNCED = "Synced"
# True while the current attempt's pods run; False while they wait (PodsPending, or ErrImagePull,
# CreateContainerConfigError, Unschedulable, ...: what keeps them from starting).
RUNNING = "Running"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return max(0.0, (parse(end) - parse(start)).total_seconds())


def set_condition(conditions: list[dict[str, Any]] | None, type_: str, status: bool, reason: str,
                  message: str = "") -> list[dict[str, Any]]:
    """Conditions with `type_` set; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    out = [dict(c) for c in conditions or []]
    old = next((c for c in out if c.get("type") == type_), None)
    new = {"type": type_, "status": value, "reason": reason, "message": message,
           "lastTransitionTime": now() if old is None or old.get("status") != value else old["lastTransitionTime"]}
    if old is None:
        out.append(new)
    else:
        out[out.index(old)] = new
    return out


def stamped(conditions: list[dict[str, Any]], old: list[dict[str, Any]] | None, generation: int | None
            ) -> list[dict[str, Any]]:
    """Each condition with the observedGeneration it was set for: this generation where it changed, its earlier
    one where it did not."""
    before = {c.get("type"): c for c in old or []}

    def same(a: dict[str, Any], b: dict[str, Any] | None) -> bool:
        drop = lambda c: {k: v for k, v in c.items() if k != "observedGeneration"}  # noqa: E731
        return b is not None and drop(a) == drop(b)

    return [{**c, "observedGeneration": before[c["type"]].get("observedGeneration", generation)
             if same(c, before.get(c["type"])) else generation} for c in conditions]


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def progress_fields(progress: Progress) -> dict[str, Any]:
    """The status fields that mirror the trainer's progress.json."""
    metrics = {"loss": progress.loss, "evalLoss": progress.eval_loss, "learningRate": progress.learning_rate,
               "gradNorm": progress.grad_norm}
    total = progress.total_steps
    return {
        "step": progress.step,
        "totalSteps": total,
        "epoch": round(progress.epoch, 4),
        "progress": f"{progress.step}/{total}" if total else str(progress.step),
        "metrics": {k: v for k, v in metrics.items() if v is not None} or None,
        "lastCheckpoint": progress.last_checkpoint,
        "bestCheckpoint": progress.best_checkpoint,
    }


def changed(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """The part of a merge patch that would change `current` (None deletes a key)."""
    return {k: v for k, v in patch.items() if current.get(k) != v}
