"""The training report (report.json next to the adapter) and its terminal summary.

report.json holds the figures a reader wants at a glance, the metrics log (`history`, the lines of
metrics.jsonl) and the checkpoints, so that report.html can be rebuilt from the adapter's directory alone.
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from rich.console import Console
from rich.table import Table
from transformers import TrainerState

from tunewright.runs import now_iso

LIBRARIES = ("tunewright", "torch", "transformers", "peft", "trl", "accelerate")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _losses(state: TrainerState, key: str) -> list[tuple[int, float]]:
    return [(int(e["step"]), float(e[key])) for e in state.log_history if key in e and "step" in e]


def last_train_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    """The objective's own figures (rewards, accuracy, Kendall τ) at the last training log: what a run
    without a validation split can show."""
    last = next((r for r in reversed(history) if "loss" in r), {})
    return {k: v for k, v in last.items() if k.startswith(("rewards/", "ranking/"))}


def build_report(*, state: TrainerState, run_id: str, config: dict[str, Any], dataset: dict[str, Any],
                 base_model: dict[str, Any], counts: dict[str, int], initial_eval_loss: float | None,
                 best: Any, stopped_early: bool, training_seconds: float, samples_per_step: int,
                 resumed_from: str | None, history: list[dict[str, Any]],
                 checkpoints: list[dict[str, Any]]) -> dict[str, Any]:
    train = _losses(state, "loss")
    evals = _losses(state, "eval_loss")
    last_eval = next((e for e in reversed(state.log_history) if "eval_loss" in e), {})
    extra = {k: v for k, v in last_eval.items() if k.startswith("eval_") and k not in (
        "eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")}
    steps_this_attempt = state.global_step - (int(resumed_from.rsplit("-", 1)[-1]) if resumed_from else 0)
    return {
        "runId": run_id,
        "method": config["method"],
        "baseModel": base_model,
        "dataset": dataset,
        "samples": counts,
        "finalTrainLoss": train[-1][1] if train else None,
        "initialEvalLoss": initial_eval_loss,
        "finalEvalLoss": evals[-1][1] if evals else None,
        "bestEvalLoss": best.metric if best is not None else None,
        "bestStep": best.step if best is not None else None,
        "bestCheckpoint": best.name if best is not None else None,
        "finalEvalMetrics": extra,
        "finalTrainMetrics": last_train_metrics(history),
        "epochs": round(state.epoch or 0.0, 4),
        "steps": state.global_step,
        "maxSteps": state.max_steps,
        "stoppedEarly": stopped_early,
        "trainingSeconds": round(training_seconds, 3),
        "samplesPerSecond": round(steps_this_attempt * samples_per_step / training_seconds, 3)
        if training_seconds > 0 else None,
        "resumedFrom": resumed_from,
        "checkpoints": checkpoints,
        "history": history,
        "config": config,
        "versions": library_versions(),
        "created": now_iso(),
    }


def print_summary(report: dict[str, Any], adapter_uri: str, page_uri: str | None = None,
                  console: Console | None = None) -> None:
    """The figures as a table; the URIs after it, each on one line that never wraps, so they stay whole
    for copying (a table cell shortens or folds what does not fit the terminal)."""
    console = console or Console(stderr=True)
    table = Table(title=f"run {report['runId']} ({report['method']})", show_header=False)

    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    for label, key in (("steps", "steps"), ("epochs", "epochs"), ("final train loss", "finalTrainLoss"),
                       ("eval loss before", "initialEvalLoss"), ("final eval loss", "finalEvalLoss"),
                       ("best eval loss", "bestEvalLoss"), ("best step", "bestStep"),
                       ("stopped early", "stoppedEarly"), ("training seconds", "trainingSeconds"),
                       ("samples/s", "samplesPerSecond")):
        if report.get(key) is not None:
            table.add_row(label, fmt(report[key]))
    for key, value in (report.get("finalTrainMetrics") or {}).items():
        table.add_row(f"train {key}", fmt(value))
    for key, value in (report.get("finalEvalMetrics") or {}).items():
        table.add_row(key, fmt(value))
    console.print(table)
    console.print(f"adapter: {adapter_uri}", soft_wrap=True, highlight=False)
    if page_uri:
        console.print(f"report: {page_uri}", soft_wrap=True, highlight=False)
