"""Direct Preference Optimization on (prompt, chosen, rejected) pairs, from preference rows or from rated
samples of one prompt whose ratings differ by at least `dpo.minRatingGap`.

The reference is the base model with the adapter disabled, scored lazily inside the first step that meets a
sample and cached for the run and its checkpoints (see `training/reference.py`); chosen and rejected go
through one concatenated forward of 2B samples.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tunewright.config import TrainingConfig
from tunewright.data.rows import PreferenceRow, RatedRow, Row
from tunewright.storage import Storage
from tunewright.training import reference
from tunewright.training.family import Family
from tunewright.training.objectives.base import DataError
from tunewright.training.objectives.losses import dpo_losses

log = logging.getLogger(__name__)

IDS = "sample_ids"  # batch key of the samples' ids in the reference cache; everything else is the family's


def rated_pairs(rows: Sequence[RatedRow], min_gap: float) -> list[tuple[str, str, str]]:
    """(prompt, better, worse) for every two samples of a prompt whose ratings differ by >= min_gap."""
    by_prompt: dict[str, list[RatedRow]] = defaultdict(list)
    for row in rows:
        by_prompt[row.prompt].append(row)
    return [(prompt, a.completion, b.completion)
            for prompt, group in by_prompt.items() for a in group for b in group
            if a.rating - b.rating >= min_gap and a.completion != b.completion]


def preference_pairs(rows: Sequence[Row], min_gap: float) -> list[tuple[str, str, str]]:
    pairs = [(r.prompt, r.chosen, r.rejected) for r in rows if isinstance(r, PreferenceRow)]
    rated = [r for r in rows if isinstance(r, RatedRow)]
    if rated:
        formed = rated_pairs(rated, min_gap)
        log.info("dpo: formed %d preference pairs from %d rated samples of %d prompts (rating gap >= %g)",
                 len(formed), len(rated), len({r.prompt for r in rated}), min_gap)
        if not formed:
            ratings = sorted({r.rating for r in rated})
            raise DataError(f"no preference pairs: no two samples of one prompt have ratings that differ by "
                            f">= dpo.minRatingGap ({min_gap:g}); ratings present: {ratings}")
        pairs += formed
    return pairs


def reference_key(config: TrainingConfig) -> dict[str, Any]:
    """What besides the encoded samples decides the reference scores (see reference.py)."""
    return {"baseModel": config.base_model, "revision": config.base_model_revision,
            "precision": config.training.precision, "maxLength": config.data.max_length}


class ReferenceScored:
    """The lazily scored, cached reference of DPO and ranking (tunewright.training.reference): attached in
    prepare(), saved with each checkpoint and restored on resume."""

    config: TrainingConfig | None
    reference: reference.ReferenceScores | None

    def prepare(self, trainer: Any, datasets: list[list[dict[str, Any]]], family: Family,
                run_dir: Storage | None = None) -> None:
        assert self.config is not None, "examples() sets the configuration"
        self.reference = reference.attach(trainer, datasets, family, reference_key(self.config))

    def save(self, directory: Path) -> None:
        if self.reference is not None:
            self.reference.save(directory)

    def restore(self, directory: Path) -> None:
        if self.reference is not None:
            self.reference.restore(directory)


class DPOObjective(ReferenceScored):
    name = "dpo"
    kinds = ("preference", "rated")

    def __init__(self) -> None:
        self.config: TrainingConfig | None = None
        self.reference: reference.ReferenceScores | None = None

    def examples(self, rows: Sequence[Row], family: Family, config: TrainingConfig) -> list[dict[str, Any]]:
        self.config = config
        examples, identical, empty = [], 0, 0
        for prompt, chosen, rejected in preference_pairs(rows, config.dpo.min_rating_gap):
            encoded = [family.encode(prompt, chosen), family.encode(prompt, rejected)]
            if reference.fingerprint(encoded[0]) == reference.fingerprint(encoded[1]):
                identical += 1  # e.g. samples that differ only past data.maxLength
                continue
            if min(family.sample_tokens(e) for e in encoded) == 0:
                empty += 1  # nothing to compare
                continue
            examples.append({"samples": encoded})
        if identical:
            log.warning("dpo: skipped %d pairs whose chosen and rejected samples are identical once encoded "
                        "(data.maxLength %d)", identical, config.data.max_length)
        if empty:
            log.warning("dpo: skipped %d pairs with an empty sample (no tokens to score)", empty)
        if rows and not examples:
            raise DataError(f"no usable preference pairs in {len(rows)} rows ({identical} identical once encoded, "
                            f"{empty} with an empty sample)")
        return examples

    def collate(self, examples: list[dict[str, Any]], family: Family) -> dict[str, Any]:
        if any("ids" not in e for e in examples):
            raise RuntimeError("dpo examples have no reference ids: prepare() must run before training")
        batch = family.collate([e["samples"][0] for e in examples] + [e["samples"][1] for e in examples])
        batch[IDS] = torch.tensor([e["ids"][0] for e in examples] + [e["ids"][1] for e in examples])
        return batch

    def loss(self, model: Any, batch: dict[str, Any], family: Family) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert self.config is not None, "examples() sets the configuration"
        assert self.reference is not None, "prepare() sets up the reference"
        dpo = self.config.dpo
        inputs = {k: v for k, v in batch.items() if k != IDS}
        ref = self.reference.scores(inputs, batch[IDS])
        logps, tokens = family.sequence_logprobs(model, inputs)
        chosen, rejected = (logps - ref).chunk(2)
        chosen_tokens, rejected_tokens = tokens.chunk(2)
        losses = dpo_losses(chosen, rejected, beta=dpo.beta, loss_type=dpo.loss_type,
                            label_smoothing=dpo.label_smoothing,
                            chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens)
        reward_chosen, reward_rejected = dpo.beta * chosen.detach(), dpo.beta * rejected.detach()
        metrics = {  # TRL's names (and meaning: a tie is not a correct preference)
            "rewards/chosen": reward_chosen.mean(),
            "rewards/rejected": reward_rejected.mean(),
            "rewards/margins": (reward_chosen - reward_rejected).mean(),
            "rewards/accuracies": (reward_chosen > reward_rejected).float().mean(),
        }
        return losses.mean(), metrics

