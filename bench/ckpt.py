"""Checkpoint overhead: tunewright SFT with a checkpoint every K steps to S3 (moto's server, run by the
parent) vs the same run without periodic checkpoints. Both runs keep their data, run records and final
checkpoint on the same S3 root; the final checkpoint is written after the last measured step in both.

Besides the two runs' steps/s (the headline ratio), the checkpointing run estimates its own cost per
checkpoint from its step durations: everything above the median step, summed over the window, per checkpoint.
"""

from __future__ import annotations

import os
import statistics
import uuid
from typing import Any

from bench import data
from bench.measure import StepClock
from bench.sides import run_tunewright, tunewright_config


class StepDurations(StepClock):
    """A StepClock that also keeps each step's end time and the gap before the next step begins (where HF
    logs and saves: a checkpoint's synchronous part lands in the gap after step K)."""

    def __init__(self, warmup: int):
        super().__init__(warmup)
        self.ends: dict[int, float] = {}
        self.gaps: dict[int, float] = {}

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step in self.ends:
            self.gaps[state.global_step] = self.now() - self.ends[state.global_step]

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        super().on_step_end(args, state, control, **kwargs)
        self.ends[state.global_step] = self.now()

    def per_save(self, every: int) -> dict[str, float | None]:
        """Seconds per checkpoint: in total (every step duration above the median one, summed over the window,
        per checkpoint: includes the background upload slowing later steps) and in the synchronous save."""
        steps = sorted(s for s in self.ends if s > self.warmup + 1 and s - 1 in self.ends)
        durations = {s: self.ends[s] - self.ends[s - 1] for s in steps}
        saved = [s for s in durations if (s - 1) % every == 0]
        if not saved:
            return {"seconds_per_checkpoint": None, "sync_seconds_per_checkpoint": None}
        typical = statistics.median(d for s, d in durations.items() if s not in saved)
        gap = statistics.median(g for s, g in self.gaps.items() if s % every)
        return {"seconds_per_checkpoint": sum(d - typical for d in durations.values()) / len(saved),
                "sync_seconds_per_checkpoint": statistics.median(self.gaps[s - 1] - gap for s in saved)}


def _run(p: dict[str, Any], every: int | None) -> dict[str, Any]:
    rows = data.rated(data.split(data.preference_pairs(p["per_prompt"]))[0])
    config = tunewright_config(p, "sft", checkpointing={"everySteps": every} if every else {})
    seen: dict[str, StepDurations] = {}

    def hook(trainer: Any) -> None:
        seen["clock"] = StepDurations(p["warmup"])
        trainer.add_callback(seen["clock"])

    root = f"s3://{os.environ['TUNEWRIGHT_BENCH_BUCKET']}/ckpt-{uuid.uuid4().hex[:8]}"
    run_tunewright(config, rows, "rated", hook, root_uri=root)
    clock = seen["clock"]
    return {"steps_per_s": clock.steps_per_second(), **(clock.per_save(every) if every else {})}


def with_checkpoints(p: dict[str, Any]) -> dict[str, Any]:
    return _run(p, p["every"])


def without(p: dict[str, Any]) -> dict[str, Any]:
    return _run(p, None)
