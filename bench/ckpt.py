"""Checkpoint overhead: tunewright SFT with a checkpoint every K steps to S3 (moto's server, run by the
parent) vs the same run without periodic checkpoints. Both runs keep their data, run records and final
checkpoint on the same S3 root; the final checkpoint is written after the last measured step in both, and
the runs are shorter than an epoch, so no epoch-end checkpoint lands in either window.

A checkpoint costs a fraction of a second, less than step times vary on shared cores, so the two runs'
steps/s (different processes, a minute apart) mostly measure the machine's load. Each run is measured
against itself instead: at every K-th step (where one run saves) the `AFTER` following steps' time above
the run's median step (`excess`, median over the positions), as a fraction of K median steps
(`interval_cost`). HF saves between step K and K+1, the upload runs in the background during the next
steps: both land there. Load spikes land there in both runs alike, so the overhead is interval_cost(with)
- interval_cost(without): the extra wall time checkpoints add per K steps.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from typing import Any

from bench import data
from bench.measure import StepClock
from bench.sides import run_tunewright, tunewright_config

AFTER = 3  # steps after a checkpoint that its cost lands in: the synchronous save in the first, then the upload


class SaveClock(StepClock):
    """A StepClock that also keeps the gap between a step's end and the next step's begin (where HF logs
    and saves: a checkpoint's synchronous part), and how long each background upload took."""

    def __init__(self, warmup: int, trainer: Any):
        super().__init__(warmup)
        self.trainer = trainer
        self.gaps: dict[int, float] = {}
        self.uploads: list[float] = []
        self.upload_cpu = 0.0  # CPU seconds of the upload thread, through the latest commit

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from tunewright.training.callbacks import CommitCheckpointCallback

        for cb in self.trainer.callback_handler.callbacks:  # added by the Run after the trainer was built
            if isinstance(cb, CommitCheckpointCallback):
                cb.store.on_commit.append(self._committed)

    def _committed(self, info: Any, seconds: float) -> None:  # on the upload thread
        self.uploads.append(seconds)
        self.upload_cpu = time.thread_time()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        super().on_step_begin(args, state, control, **kwargs)
        if state.global_step > self.warmup and state.global_step in self.ends:
            self.gaps[state.global_step] = self.now() - self.ends[state.global_step]

    def summary(self, every: int, saving: bool) -> dict[str, Any]:
        """The window's step times around every K-th step, the same in both runs (one saves there)."""
        durations = self.durations()
        positions = [s for s in range(every, self.last_step + 1, every)
                     if all(s + j in durations for j in range(1, AFTER + 1))]
        hit = {s + j for s in positions for j in range(1, AFTER + 1)}
        typical = statistics.median(d for s, d in durations.items() if s not in hit)
        excess = [sum(durations[s + j] for j in range(1, AFTER + 1)) - AFTER * typical for s in positions]
        out: dict[str, Any] = {
            "steps_per_s": self.mean_steps_per_second(), "step_s": typical, "positions": len(positions),
            "excess_s_per_position": statistics.median(excess),
            "interval_cost": statistics.median(excess) / (every * typical),
        }
        if saving:
            plain = statistics.median(g for s, g in self.gaps.items() if s % every)
            out["sync_s_per_checkpoint"] = statistics.median(self.gaps[s] - plain for s in positions)
        if self.uploads:
            out |= {"upload_s_per_checkpoint": statistics.median(self.uploads),
                    "upload_cpu_s_per_checkpoint": self.upload_cpu / len(self.uploads)}
        return out


def _run(p: dict[str, Any], saving: bool) -> dict[str, Any]:
    rows = data.rated(data.split(data.preference_pairs(p["per_prompt"]))[0])
    if len([r for r in rows if r.rating >= 4]) < p["steps"] * p["batch"]:
        raise ValueError("the checkpoint runs must stay within one epoch (raise per_prompt)")
    config = tunewright_config(p, "sft", checkpointing={"everySteps": p["every"]} if saving else {})
    seen: dict[str, SaveClock] = {}

    def hook(trainer: Any) -> None:
        seen["clock"] = clock = SaveClock(p["warmup"], trainer)
        trainer.add_callback(clock)

    root = f"s3://{os.environ['TUNEWRIGHT_BENCH_BUCKET']}/ckpt-{uuid.uuid4().hex[:8]}"
    run_tunewright(config, rows, "rated", hook, root_uri=root)
    return seen["clock"].summary(p["every"], saving)


def with_checkpoints(p: dict[str, Any]) -> dict[str, Any]:
    return _run(p, saving=True)


def without(p: dict[str, Any]) -> dict[str, Any]:
    return _run(p, saving=False)
