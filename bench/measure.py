"""Child-side measurement: a step clock with warm-up excluded, token counting, and the preference judge.

Both tools train on HF Trainer, so one TrainerCallback times both. Time the harness spends on its own
evaluations (the judge) is paused out of every clock.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tunewright.training.family import sample_logprobs

PROCESS_START = time.perf_counter()  # reset by bench.child to the moment the process began


class StepClock(TrainerCallback):
    """Wall time of optimizer steps `warmup+1 .. last`, each step's duration, and how long the trainer spent
    between being built and its first step (setup: e.g. a reference pass)."""

    def __init__(self, warmup: int, started: float | None = None):
        self.warmup = warmup
        self.paused = 0.0
        # When the clock starts: `started` (a perf_counter() taken before the trainer was built), or now.
        self.built = self.now() if started is None else started
        self.first_step: float | None = None
        self.first_step_process_s: float | None = None  # wall seconds from process start to the first step
        self.window_start: float | None = None
        self.last_step = 0
        self.last_time = 0.0
        self.ends: dict[int, float] = {}

    def now(self) -> float:
        return time.perf_counter() - self.paused

    @contextmanager
    def pause(self) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - began

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                      **kwargs: Any) -> None:
        if self.first_step is None:
            self.first_step = self.now()
            self.first_step_process_s = time.perf_counter() - PROCESS_START
            self.ends[state.global_step] = self.first_step

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        if state.global_step == self.warmup:
            self.window_start = self.now()
        self.last_step, self.last_time = state.global_step, self.now()
        self.ends[state.global_step] = self.last_time

    def mean_steps_per_second(self) -> float:
        """Steps over the window's wall time."""
        if self.window_start is None or self.last_step <= self.warmup:
            raise RuntimeError(f"no steps measured after {self.warmup} warm-up steps (last step {self.last_step})")
        return (self.last_step - self.warmup) / (self.last_time - self.window_start)

    def steps_per_second(self) -> float:
        """1 / the lower quartile of the window's step times. Every step does the same work, and other
        processes on the shared cores only ever add time to a step (they come and go for seconds at a time:
        a median over a short window moves by +-20 % between processes). The quartile rather than the
        minimum, so that one short batch (text batches differ by a few tokens) does not decide it."""
        durations = list(self.durations().values())
        if not durations:
            raise RuntimeError(f"no steps measured after {self.warmup} warm-up steps (last step {self.last_step})")
        quartile = statistics.quantiles(durations, n=4, method="inclusive")[0] if len(durations) > 1 else durations[0]
        return 1 / quartile

    def durations(self) -> dict[int, float]:
        """Seconds of each measured step `s`: from the end of step s-1 to the end of step s, so a save after
        step s-1 (HF saves between steps) is in step s."""
        return {s: self.ends[s] - self.ends[s - 1] for s in sorted(self.ends)
                if s > self.warmup and s - 1 in self.ends and s <= self.last_step}

    def setup_seconds(self) -> float | None:
        return None if self.first_step is None else self.first_step - self.built

    def since_built(self) -> float:
        return self.now() - self.built


class TokenCounter:
    """Wraps a data collator and counts the samples and non-pad tokens of every batch it makes."""

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]], mask_key: str = "attention_mask"):
        self.collate = collate
        self.mask_key = mask_key
        self.samples = 0
        self.tokens = 0

    def __call__(self, examples: list[Any]) -> dict[str, Any]:
        batch = self.collate(examples)
        self.samples += len(examples)
        self.tokens += int(batch[self.mask_key].sum())
        return batch

    def tokens_per_sample(self) -> float:
        return self.tokens / max(self.samples, 1)


Encoded = tuple[list[int], list[int]]  # (input ids, 1 where the token belongs to the completion)


class PreferenceJudge(TrainerCallback):
    """Held-out preference accuracy every `every` steps until it reaches `target`; records when, and stops
    training once the target is reached and `min_steps` steps are done (the rest would only cost time).

    The implicit DPO reward of a completion is log π(completion | prompt) − log π_ref(completion | prompt),
    with π_ref the base model (the adapter disabled). A pair counts as right when the chosen completion's
    reward is higher. Each tool's model is judged on the token layout it was trained with (`pairs`).
    """

    def __init__(self, pairs: list[tuple[Encoded, Encoded]], clock: StepClock, every: int, target: float,
                 bf16: bool, pad_id: int, min_steps: int):
        self.min_steps = min_steps
        self.pairs = pairs
        self.clock = clock
        self.every = every
        self.target = target
        self.bf16 = bf16
        self.pad_id = pad_id
        self.reference: torch.Tensor | None = None
        self.history: list[tuple[int, float]] = []
        self.reached: dict[str, float] | None = None

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: Any = None, **kwargs: Any) -> None:
        if self.reached is None and state.global_step % self.every == 0:
            elapsed = self.clock.since_built()
            with self.clock.pause():
                accuracy = self.accuracy(model)
            self.history.append((state.global_step, accuracy))
            if accuracy >= self.target:
                self.reached = {"step": state.global_step, "seconds": elapsed, "accuracy": accuracy}
        if self.reached is not None and state.global_step >= self.min_steps:
            control.should_training_stop = True

    def accuracy(self, model: Any) -> float:
        was_training = model.training
        model.eval()
        try:
            if self.reference is None:
                with model.disable_adapter():
                    self.reference = self._logps(model)
            rewards = (self._logps(model) - self.reference).view(-1, 2)
        finally:
            model.train(was_training)
        return float((rewards[:, 0] > rewards[:, 1]).float().mean())

    @torch.no_grad()
    def _logps(self, model: Any, batch_size: int = 16) -> torch.Tensor:
        flat = [seq for pair in self.pairs for seq in pair]
        out = []
        for i in range(0, len(flat), batch_size):
            chunk = flat[i:i + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            attention = torch.zeros_like(ids)
            completion = torch.zeros_like(ids)
            for row, (tokens, mask) in enumerate(chunk):
                ids[row, :len(tokens)] = torch.tensor(tokens)
                attention[row, :len(tokens)] = 1
                completion[row, :len(mask)] = torch.tensor(mask)
            device = next(model.parameters()).device  # the GPU in `make bench-gpu`
            ids, attention, completion = ids.to(device), attention.to(device), completion.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logps, _ = sample_logprobs(model, {"input_ids": ids, "attention_mask": attention,
                                                   "sample_mask": completion})
            out.append(logps.cpu())
        return torch.cat(out)
