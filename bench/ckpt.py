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
    """A StepClock that also keeps every step's end time (one save happens between step K and K+1)."""

    def __init__(self, warmup: int):
        super().__init__(warmup)
        self.ends: dict[int, float] = {}

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        super().on_step_end(args, state, control, **kwargs)
        self.ends[state.global_step] = self.now()

    def cost_per_save(self, every: int) -> float | None:
        window = [s for s in sorted(self.ends) if s > self.warmup + 1]
        durations = {s: self.ends[s] - self.ends[s - 1] for s in window if s - 1 in self.ends}
        saves = [s for s in durations if (s - 1) % every == 0]
        if not saves:
            return None
        typical = statistics.median(d for s, d in durations.items() if s not in saves)
        return sum(d - typical for d in durations.values()) / len(saves)


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
    return {"steps_per_s": clock.steps_per_second(),
            "seconds_per_checkpoint": clock.cost_per_save(every) if every else None}


def with_checkpoints(p: dict[str, Any]) -> dict[str, Any]:
    return _run(p, p["every"])


def without(p: dict[str, Any]) -> dict[str, Any]:
    return _run(p, None)
