"""Ranking objectives over lists of samples of one prompt, ordered best to worst: a margin ranking loss over
all ordered pairs, or Plackett–Luce (ListMLE) over the whole list, both on the implicit reward
β·(log π − log π_ref) as in DPO; optionally plus an SFT term on the best sample.

Lists come from ranked rows, or from rated samples grouped by prompt (see `rated_lists`). Lists of different
lengths share a batch: all samples go through one forward, and a (lists × positions) index with a mask
gathers the rewards back into lists.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from tunewright.config import TrainingConfig
from tunewright.data.rows import RankedRow, RatedRow, Row
from tunewright.training import reference
from tunewright.training.family import Family
from tunewright.training.objectives.base import DataError
from tunewright.training.objectives.dpo import ReferenceScored
from tunewright.training.objectives.losses import listmle_loss, margin_ranking_loss, ranking_metrics

log = logging.getLogger(__name__)

IDS, INDEX, MASK = "sample_ids", "list_index", "list_mask"  # the rest of a batch is the family's


def rated_lists(rows: Sequence[RatedRow]) -> list[tuple[str, list[str]]]:
    """Tie-free rankings from rated samples: per prompt, one list per sample of the most common rating,
    the k-th list taking the k-th sample of each rating (cycling through ratings with fewer samples),
    best first. Equal ratings never share a list, so every pair in a list is a real preference."""
    by_prompt: dict[str, dict[float, list[str]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_prompt[row.prompt][row.rating].append(row.completion)
    lists = []
    for prompt, buckets in by_prompt.items():
        ordered = [buckets[r] for r in sorted(buckets, reverse=True)]
        for k in range(max(len(b) for b in ordered)):
            lists.append((prompt, [b[k % len(b)] for b in ordered]))
    return lists


def ranked_lists(rows: Sequence[Row]) -> list[tuple[str, list[str]]]:
    lists = [(r.prompt, list(r.completions)) for r in rows if isinstance(r, RankedRow)]
    rated = [r for r in rows if isinstance(r, RatedRow)]
    if rated:
        formed = rated_lists(rated)
        log.info("ranking: formed %d lists from %d rated samples of %d prompts", len(formed), len(rated),
                 len({r.prompt for r in rated}))
        lists += formed
    return lists


def distinct(encoded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The list without repeats (samples identical once encoded), keeping the better-ranked copy."""
    seen, kept = set(), []
    for item in encoded:
        key = reference.fingerprint(item)
        if key not in seen:
            seen.add(key)
            kept.append(item)
    return kept


class RankingObjective(ReferenceScored):
    name = "ranking"
    kinds = ("ranked", "rated")

    def __init__(self) -> None:
        self.config: TrainingConfig | None = None
        self.reference: reference.ReferenceScores | None = None

    def examples(self, rows: Sequence[Row], family: Family, config: TrainingConfig) -> list[dict[str, Any]]:
        self.config = config
        examples, short = [], 0
        for prompt, samples in ranked_lists(rows):
            encoded = [e for e in distinct([family.encode(prompt, s) for s in samples]) if family.sample_tokens(e)]
            if len(encoded) < 2:
                short += 1
                continue
            examples.append({"samples": encoded})
        if short:
            log.warning("ranking: skipped %d lists with fewer than two distinct samples (one rating for a prompt, "
                        "samples identical once encoded, or empty)", short)
        if rows and not examples:
            raise DataError(f"no rankings of two or more distinct samples in {len(rows)} rows "
                            "(a rated prompt needs samples with different ratings)")
        return examples

    def collate(self, examples: list[dict[str, Any]], family: Family) -> dict[str, Any]:
        if any("ids" not in e for e in examples):
            raise RuntimeError("ranking examples have no reference ids: prepare() must run before training")
        width = max(len(e["samples"]) for e in examples)
        index = torch.zeros(len(examples), width, dtype=torch.long)
        mask = torch.zeros(len(examples), width, dtype=torch.bool)
        flat, ids = [], []
        for i, e in enumerate(examples):
            n = len(e["samples"])
            index[i, :n] = torch.arange(len(flat), len(flat) + n)
            mask[i, :n] = True
            flat += e["samples"]
            ids += e["ids"]
        return {**family.collate(flat), IDS: torch.tensor(ids), INDEX: index, MASK: mask}

    def loss(self, model: Any, batch: dict[str, Any], family: Family) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert self.config is not None, "examples() sets the configuration"
        assert self.reference is not None, "prepare() sets up the reference"
        params = self.config.ranking
        inputs = {k: v for k, v in batch.items() if k not in (IDS, INDEX, MASK)}
        ref = self.reference.scores(inputs, batch[IDS])
        logps, tokens = family.sequence_logprobs(model, inputs)
        index, mask = batch[INDEX], batch[MASK]
        rewards = (params.beta * (logps - ref))[index]
        if params.loss == "margin":
            loss = margin_ranking_loss(rewards, mask, params.margin)
        else:
            loss = listmle_loss(rewards, mask)
        if params.sft_weight:
            best = index[:, 0]
            loss = loss + params.sft_weight * -logps[best].sum() / tokens[best].sum().clamp(min=1)
        return loss, ranking_metrics(rewards.detach(), mask)

