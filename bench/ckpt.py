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

Whether checkpointing also slows the steps away from checkpoints (its upload threads, the GIL, the
allocator after a save) is answered by `step_cpu_s`, the training thread's CPU time per step
(time.thread_time), and `other_threads_cpu_s`, what every other thread of the process used meanwhile; bench.run
reports the per-repetition ratios of the two runs' median step and step CPU beside the overhead.

The measurement ends at the last step: once the uploads under way are committed, the process ends
(bench.child.finish), without the final checkpoint and the publication that every run does after it (the
same in both runs, and on the slow store ~12 s of sequential requests).
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from typing import Any

from bench import data
from bench.child import finish
from bench.measure import StepClock
from bench.sides import run_tunewright, tunewright_config

AFTER = 3  # steps after a checkpoint that its cost lands in: the synchronous save in the first, then the upload


class SaveClock(StepClock):
    """A StepClock that also keeps the gap between a step's end and the next step's begin (where HF logs
    and saves: a checkpoint's synchronous part), how long each background upload took, and the CPU time of
    the training thread and of the others; at the last step it ends the process with its summary."""

    def __init__(self, warmup: int, trainer: Any, every: int, saving: bool):
        super().__init__(warmup)
        self.trainer = trainer
        self.every = every
        self.saving = saving
        self.store: Any = None
        self.gaps: dict[int, float] = {}
        self.uploads: list[float] = []
        self.upload_cpu = 0.0  # CPU seconds of the upload thread, through the latest commit
        self.cpu_ends: dict[int, float] = {}  # the training thread's CPU time (thread_time) at each step's end
        self.process_cpu_ends: dict[int, float] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from tunewright.training.callbacks import CommitCheckpointCallback

        for cb in self.trainer.callback_handler.callbacks:  # added by the Run after the trainer was built
            if isinstance(cb, CommitCheckpointCallback):
                self.store = cb.store
                cb.store.on_commit.append(self._committed)

    def _committed(self, info: Any, seconds: float) -> None:  # on the upload thread
        self.uploads.append(seconds)
        self.upload_cpu = time.thread_time()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        super().on_step_end(args, state, control, **kwargs)
        self.cpu_ends[state.global_step] = time.thread_time()  # HF trains on the thread that calls train()
        self.process_cpu_ends[state.global_step] = time.process_time()  # every thread of the process
        if state.global_step == state.max_steps:
            self.store.flush(timeout=120)  # the uploads under way, so that every checkpoint's figures count
            finish(self.summary())

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        super().on_step_begin(args, state, control, **kwargs)
        if state.global_step > self.warmup and state.global_step in self.ends:
            self.gaps[state.global_step] = self.now() - self.ends[state.global_step]

    def summary(self) -> dict[str, Any]:
        """The window's step times around every K-th step, the same in both runs (one saves there)."""
        every = self.every
        durations = self.durations()
        positions = [s for s in range(every, self.last_step + 1, every)
                     if all(s + j in durations for j in range(1, AFTER + 1))]
        hit = {s + j for s in positions for j in range(1, AFTER + 1)}
        typical = statistics.median(d for s, d in durations.items() if s not in hit)
        cpu = [self.cpu_ends[s] - self.cpu_ends[s - 1] for s in durations
               if s not in hit and s - 1 in self.cpu_ends and s in self.cpu_ends]
        excess = [sum(durations[s + j] for j in range(1, AFTER + 1)) - AFTER * typical for s in positions]
        out: dict[str, Any] = {
            "steps_per_s": self.mean_steps_per_second(), "step_s": typical, "step_cpu_s": statistics.median(cpu),
            "positions": len(positions),
            # CPU of the process's other threads (uploads, run files, lease) during the measured steps
            "other_threads_cpu_s": (self.process_cpu_ends[self.last_step] - self.process_cpu_ends[self.warmup])
            - (self.cpu_ends[self.last_step] - self.cpu_ends[self.warmup]),
            "excess_s_per_position": statistics.median(excess),
            "interval_cost": statistics.median(excess) / (every * typical),
        }
        if self.saving:
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

    def hook(trainer: Any) -> None:
        trainer.add_callback(SaveClock(p["warmup"], trainer, p["every"], saving))

    root = f"s3://{os.environ['TUNEWRIGHT_BENCH_BUCKET']}/ckpt-{uuid.uuid4().hex[:8]}"
    run_tunewright(config, rows, "rated", hook, root_uri=root)
    raise RuntimeError("the run ended before its last step")  # SaveClock ends the process at the last step


def with_checkpoints(p: dict[str, Any]) -> dict[str, Any]:
    return _run(p, saving=True)


def without(p: dict[str, Any]) -> dict[str, Any]:
    return _run(p, saving=False)
