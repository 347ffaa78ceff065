"""Reference log-probabilities for DPO and ranking, computed lazily and cached per sample for the run.

The reference is the base model (the adapter disabled, no second copy). A sample's score (log-prob sum,
token count) is computed the first time a batch holding it is trained on or evaluated, inside that step:
one extra forward under no_grad with the adapter disabled, in eval mode, under the trainer's autocast.
There is no separate pass before training, so the first step starts at once; later epochs, evaluations
and resumed attempts read the cache and never score a sample again.

The cache travels with the checkpoints (`reference.pt` in each checkpoint directory, written by
`ObjectiveTrainer._save_checkpoint`) and is restored on resume when its key matches: the key hashes the
encoded samples themselves (dataset content, split, tokenizer/processor, max length, exactly as the model
sees them) with the base model reference, revision, commit, family and precision.

Under data parallelism each process scores only the samples of its own micro-batches (the sampler's
shard), and the processes exchange what they scored since the last exchange (`sync`, at the end of every
step until every training sample is known, and after every evaluation), so all hold the same cache and the
checkpoint written by process 0 is complete. Written by hand: TRL's `precompute_ref_log_probs` scores the
whole dataset up front in `DPOTrainer.__init__`, and its in-step alternative recomputes every step.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from transformers import TrainerCallback

from tunewright.training.family import Family

log = logging.getLogger(__name__)

FILE = "reference.pt"  # in each checkpoint directory
# Reference forwards run, and samples scored, in this process (tests assert that none is scored twice).
reference_batches = 0
reference_samples = 0


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, dict):
        digest.update(b"{")
        for key in sorted(value):
            _feed(digest, str(key))
            _feed(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, list | tuple):
        digest.update(b"[")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    elif isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    else:
        digest.update(json.dumps(value, default=str).encode())


def fingerprint(value: Any) -> str:
    """A stable sha256 of nested dicts/lists/tensors/scalars (an encoded sample, a cache key)."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


class ReferenceScores:
    """The reference scores of every sample of a run, by sample id (0..n-1), filled as training meets them.

    `known[i]` says whether sample i has been scored and exchanged with the other processes; `pending`
    holds what this process scored since the last `sync`.
    """

    def __init__(self, model: Any, family: Family, size: int, train_size: int, key: str,
                 autocast: Callable[[], AbstractContextManager[Any]] = nullcontext, state: Any = None):
        if not hasattr(model, "disable_adapter"):
            raise TypeError("the reference is the base model under a PEFT adapter; this model has no adapter")
        self.model, self.family, self.key, self.autocast, self.state = model, family, key, autocast, state
        self.train_size = train_size  # ids below this are training samples
        self.logps = torch.zeros(size)
        self.tokens = torch.zeros(size)
        self.known = torch.zeros(size, dtype=torch.bool)
        self.pending: dict[int, tuple[float, float]] = {}
        self.scored = 0  # samples this process scored

    @property
    def train_complete(self) -> bool:
        return bool(self.known[:self.train_size].all())

    def scores(self, inputs: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
        """Reference log-prob sums of the batch's samples (`inputs` as the family collates them, `ids`
        their sample ids), scoring in one forward those not cached yet."""
        global reference_batches, reference_samples
        wanted = ids.tolist()
        missing = [i for i, s in enumerate(wanted) if not self.known[s] and s not in self.pending]
        if missing:
            rows = torch.tensor(missing, device=ids.device)
            part = inputs if len(missing) == len(wanted) else {k: v[rows] for k, v in inputs.items()}
            was_training = self.model.training
            self.model.eval()  # no dropout: the same scores as an up-front pass
            try:
                with torch.no_grad(), self.model.disable_adapter(), self.autocast():
                    lp, n = self.family.sequence_logprobs(self.model, part)
            finally:
                self.model.train(was_training)
            reference_batches += 1
            reference_samples += len(missing)
            self.scored += len(missing)
            for row, value, count in zip(missing, lp.float().tolist(), n.float().tolist(), strict=True):
                self.pending[wanted[row]] = (value, count)
            if self._single:
                self._merge([self.pending])
        out = [self.pending[s][0] if s in self.pending else float(self.logps[s]) for s in wanted]
        return torch.tensor(out, device=ids.device)

    @property
    def _single(self) -> bool:
        return self.state is None or self.state.num_processes == 1

    def _merge(self, shares: list[dict[int, tuple[float, float]]]) -> None:
        # In process order, the first score of a sample wins, so every process ends with the same cache.
        for share in shares:
            for sample, (value, count) in share.items():
                if not self.known[sample]:
                    self.logps[sample], self.tokens[sample], self.known[sample] = value, count, True
        self.pending = {}

    def sync(self) -> None:
        """Exchange what each process scored since the last exchange (a collective: every process calls it)."""
        if self._single:
            return
        self._merge(gather_object([self.pending]))

    def save(self, directory: Path) -> None:
        torch.save({"key": self.key, "logps": self.logps, "tokens": self.tokens, "known": self.known},
                   directory / FILE)

    def restore(self, directory: Path) -> None:
        """Take the cache a checkpoint saved, when it belongs to these samples and this base model."""
        path = directory / FILE
        if not path.exists():
            log.warning("reference: %s has no %s; samples are scored again as training meets them",
                        directory.name, FILE)
            return
        saved = torch.load(path, weights_only=True)
        if saved["key"] != self.key or saved["known"].shape != self.known.shape:
            log.warning("reference: %s/%s belongs to other samples or another base model; not used",
                        directory.name, FILE)
            return
        self.logps, self.tokens, self.known = saved["logps"], saved["tokens"], saved["known"]
        log.info("reference: %d of %d sample scores restored from %s", int(self.known.sum()), len(self.known),
                 directory.name)


class SyncReference(TrainerCallback):
    """Runs `ReferenceScores.sync` where every process is at the same point: after each training step while
    some training sample is unscored, and after each evaluation."""

    def __init__(self, scores: ReferenceScores):
        self.scores = scores

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.scores.train_complete:
            self.scores.sync()

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.scores.sync()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        s = self.scores.state
        log.info("reference: process %d of %d scored %d of %d samples", s.process_index if s else 0,
                 s.num_processes if s else 1, self.scores.scored, len(self.scores.known))


def attach(trainer: Any, datasets: list[list[dict[str, Any]]], family: Family,
           key_parts: dict[str, Any]) -> ReferenceScores:
    """Number every sample of the examples (`{"samples": [encoded, ...]}`, training examples first) as
    `ids`, and return the run's lazily filled reference scores, synchronised by a callback on `trainer`."""
    samples = [s for ds in datasets for ex in ds for s in ex["samples"]]
    model = trainer.model
    key_parts = {**key_parts, "commit": getattr(getattr(model, "config", None), "_commit_hash", None),
                 "family": family.name}
    key = fingerprint({**key_parts, "samples": [fingerprint(s) for s in samples]})[:32]
    next_id = 0
    for ds in datasets:
        for ex in ds:
            ex["ids"] = list(range(next_id, next_id + len(ex["samples"])))
            next_id += len(ex["samples"])
    train_size = sum(len(ex["samples"]) for ex in datasets[0])
    scores = ReferenceScores(model, family, len(samples), train_size, key, trainer.accelerator.autocast,
                             trainer.accelerator.state)
    trainer.add_callback(SyncReference(scores))
    return scores
