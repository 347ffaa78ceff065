"""TrainerCallbacks that connect HF Trainer's loop to tunewright's run: epoch-end checkpoints, committing
checkpoints to storage, the metrics log / progress record / Prometheus, the terminal display and SIGTERM.

Only rank 0 writes (HF's `state.is_world_process_zero`); every rank keeps training.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tunewright.outages import LatestWriter, Outage
from tunewright.runs import METRICS, PROGRESS, RunStore, now_iso
from tunewright.runs import Progress as RunProgress
from tunewright.training.checkpoints import CheckpointStore


class LeaseCallback(TrainerCallback):
    """Stops training (raises) once the run's lease is lost: taken over by another trainer, or not renewed
    within the storage outage tolerance (see tunewright.lease)."""

    def __init__(self, check: Callable[[], None]):
        self.check = check

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        self.check()


class EpochEndCallback(TrainerCallback):
    """When to checkpoint (and evaluate): at every epoch end, at the last step, and every `every_steps` steps
    counted from the start of each epoch.

    HF's save/eval strategies are either "steps" (multiples of N) or "epoch", never both; the requirements
    want both. Multiples of N over the whole run land right after epoch ends (24 steps an epoch, every 25:
    checkpoints and evaluations at 24 and again at 25), so the interval restarts with each epoch: 24, 48,
    50. Every epoch end is saved, no more than N steps of work are ever unsaved, and the schedule is a
    function of the step alone, so a run resumed after an off-schedule (SIGTERM) checkpoint evaluates and
    checkpoints the same steps as an uninterrupted one, and picks the same best checkpoint. This replaces
    HF's interval decisions (DefaultFlowCallback runs before us). A step already saved is not saved (or
    evaluated) twice. The last step is also always logged.
    """

    def __init__(self, has_eval: bool, every_steps: int | None = None):
        self.has_eval = has_eval
        self.every_steps = every_steps
        self.steps_per_epoch: int | None = None
        self.saved_step = -1

    def _request(self, state: TrainerState, control: TrainerControl) -> None:
        if self.saved_step != state.global_step and not control.should_save:
            control.should_save = True
            control.should_evaluate = self.has_eval

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       train_dataloader: Any = None, **kwargs: Any) -> None:
        # HF's optimizer steps per epoch: the last, partial accumulation of an epoch is a step too.
        batches = len(train_dataloader)  # this rank's batches (the examples are in memory: always sized)
        self.steps_per_epoch = max(math.ceil(batches / args.gradient_accumulation_steps), 1)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self.saved_step == state.global_step:
            # HF's "epoch" strategy (DefaultFlowCallback, which runs before us) would save this step again,
            # racing the first save's background commit and local cleanup.
            control.should_save = control.should_evaluate = False
            return
        self._request(state, control)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        if self.every_steps and self.steps_per_epoch:
            due = state.global_step % self.steps_per_epoch % self.every_steps == 0
            control.should_save, control.should_evaluate = due, due and self.has_eval
        if state.global_step >= state.max_steps:
            self._request(state, control)
            control.should_log = True  # the final figures, whatever logEverySteps is

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        self.saved_step = state.global_step


def _eval_metric_at(state: TrainerState, step: int) -> float | None:
    for entry in reversed(state.log_history):
        if entry.get("step") == step and "eval_loss" in entry:
            return float(entry["eval_loss"])
        if entry.get("step", step) < step:
            break
    return None


class CommitCheckpointCallback(TrainerCallback):
    """After HF writes `checkpoint-<step>` locally, hand it to the CheckpointStore (upload, manifest, retention)."""

    def __init__(self, store: CheckpointStore, output_dir: Path):
        self.store = store
        self.output_dir = output_dir

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        if state.is_world_process_zero:
            local = self.output_dir / f"checkpoint-{state.global_step}"
            self.store.commit(local, state.global_step, state.epoch or 0.0,
                              _eval_metric_at(state, state.global_step))


def checkpoint_interval_steps(args: TrainingArguments, state: TrainerState) -> int:
    """The most steps between two checkpoints: every `save_steps`, and each epoch end (EpochEndCallback)."""
    epoch = math.ceil(state.max_steps / max(state.num_train_epochs, 1))
    return min(int(args.save_steps), epoch) if args.save_strategy == "steps" else epoch


class RunLogCallback(TrainerCallback):
    """Each log event → one line of metrics.jsonl, progress.json, the Prometheus gauges and the terminal."""

    def __init__(self, run: RunStore, samples_per_step: int, trainer: Any, display: TerminalDisplay,
                 prometheus: Any = None, resumed_lines: list[str] | None = None, flush_seconds: float = 0.0,
                 outage: Outage | None = None, fence: Callable[[], None] | None = None):
        self.run = run
        # Written in the background, so that a storage outage never stalls training (tunewright.outages).
        self.writer = LatestWriter(run.dir, outage or Outage(run.dir.uri), fence)
        self.samples_per_step = samples_per_step
        self.trainer = trainer
        self.display = display
        self.prometheus = prometheus
        self.lines = resumed_lines or []
        self.progress = RunProgress(state="running")
        self._mark: tuple[float, int, int] | None = None
        # Object storage has no append: metrics.jsonl is rewritten whole, so remote roots are flushed at most
        # every `flush_seconds` (and at each evaluation, checkpoint and the end). Lines lost to a crash
        # belong to steps after the last checkpoint, which the resumed run trains and logs again.
        self.flush_seconds = flush_seconds
        self._flushed = 0.0
        self._lock = threading.Lock()

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        self._mark = (time.monotonic(), state.global_step, self.trainer.tokens_seen)
        self.progress.total_steps = state.max_steps
        self.display.start(state.max_steps, state.global_step)
        if self.prometheus is not None:
            self.prometheus.started(state.global_step, state.max_steps, checkpoint_interval_steps(args, state))

    def _throughput(self, state: TrainerState, world_size: int) -> dict[str, float]:
        """Since the last log. Token counts are this rank's: data parallelism multiplies them by the world size."""
        now, step, tokens = time.monotonic(), state.global_step, self.trainer.tokens_seen
        assert self._mark is not None
        t0, s0, k0 = self._mark
        self._mark = (now, step, tokens)
        if now <= t0 or step <= s0:
            return {}
        return {"samples_per_second": (step - s0) * self.samples_per_step / (now - t0),
                "tokens_per_second": (tokens - k0) * world_size / (now - t0)}

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        logs = dict(logs or {})
        if "loss" in logs:
            logs.update(self._throughput(state, args.world_size))
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "timestamp": now_iso(),
                  "total_steps": state.max_steps, **logs}
        self.display.log(record)
        if not state.is_world_process_zero:
            return
        self.writer.check()
        self.lines.append(json.dumps(record, allow_nan=True))
        self._update_progress(record)
        if "eval_loss" in record or time.monotonic() - self._flushed >= self.flush_seconds:
            self.flush()
        if self.prometheus is not None:
            self.prometheus.observe(record)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.flush()

    def flush(self) -> None:
        """Queue metrics.jsonl and progress.json for writing; raises if the store stayed away too long."""
        with self._lock:  # the checkpoint upload thread flushes too
            self.writer.put(METRICS, "\n".join(self.lines) + "\n")
            self.writer.put(PROGRESS, self.progress.to_json())
            self._flushed = time.monotonic()

    def drain(self) -> None:
        """Flush and wait until both files are stored."""
        self.flush()
        self.writer.drain()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        self.display.advance(state.global_step)
        if self.prometheus is not None:
            self.prometheus.progressed(state.global_step)

    def on_prediction_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                           **kwargs: Any) -> None:
        if self.prometheus is not None:  # a long evaluation is progress too
            self.prometheus.progressed(state.global_step)

    def _update_progress(self, record: dict[str, Any]) -> None:
        p = self.progress
        p.step, p.epoch, p.updated = record["step"], record["epoch"], now_iso()
        for src, dest in (("loss", "loss"), ("eval_loss", "eval_loss"), ("learning_rate", "learning_rate"),
                          ("grad_norm", "grad_norm")):
            if src in record and isinstance(record[src], float | int) and math.isfinite(record[src]):
                setattr(p, dest, float(record[src]))

    def checkpoint_committed(self, name: str, best: str | None) -> None:
        self.progress.last_checkpoint, self.progress.best_checkpoint = name, best
        self.progress.updated = now_iso()
        self.flush()


class TerminalDisplay:
    """A rich progress bar (step, loss, lr, ETA) on a terminal; plain log lines otherwise (pods, CI)."""

    def __init__(self, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.bar: Progress | None = None
        self.task: Any = None

    def start(self, total: int, done: int) -> None:
        if not (self.enabled and self.console.is_terminal):
            return
        self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.description}"), TimeRemainingColumn(), console=self.console)
        self.task = self.bar.add_task("", total=total, completed=done)
        self.bar.start()

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        keys = [k for k in ("loss", "eval_loss", "learning_rate", "grad_norm", "samples_per_second",
                            "eval_rewards/accuracies", "rewards/accuracies") if k in record]
        if not keys:
            return
        text = "  ".join(f"{k}={record[k]:.4g}" for k in keys)
        if self.bar is not None and "loss" in record:
            lr = record.get("learning_rate", 0.0)
            self.bar.update(self.task, description=f"loss {record['loss']:.4f}  lr {lr:.2e}")
        if "eval_loss" in record or self.bar is None:
            # One line per event, however narrow the console (80 columns when it is not a terminal).
            self.console.print(f"step {record['step']}/{record['total_steps']} epoch {record['epoch']:.2f}  {text}",
                               soft_wrap=True, highlight=False)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class SigtermCallback(TrainerCallback):
    """On SIGTERM (Kubernetes eviction, `kubectl delete`), checkpoint at the end of the current step and stop."""

    def __init__(self) -> None:
        self.requested = False
        self.at: float | None = None  # time.monotonic() when this process got the signal
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.at = time.monotonic()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        if self.requested:
            control.should_save = True
            control.should_training_stop = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)
