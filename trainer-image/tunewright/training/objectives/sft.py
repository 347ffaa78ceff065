"""Supervised fine-tuning on high-rated samples: token-mean NLL of the sample given the prompt."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tunewright.config import TrainingConfig
from tunewright.data.rows import RankedRow, RatedRow, Row
from tunewright.storage import Storage
from tunewright.training.family import Family
from tunewright.training.objectives.base import DataError

log = logging.getLogger(__name__)


class SFTObjective:
    name = "sft"
    kinds = ("rated", "ranked")

    def examples(self, rows: Sequence[Row], family: Family, config: TrainingConfig) -> list[dict[str, Any]]:
        pairs = []
        for row in rows:
            if isinstance(row, RatedRow) and row.rating >= config.data.min_rating:
                pairs.append((row.prompt, row.completion))
            elif isinstance(row, RankedRow):  # the best of a ranking is a high-rated sample
                pairs.append((row.prompt, row.completions[0]))
        if rows and not pairs:
            raise DataError(f"no sample has rating >= data.minRating ({config.data.min_rating:g}); "
                            f"ratings present: {sorted({r.rating for r in rows if isinstance(r, RatedRow)})}")
        log.info("sft: %d of %d rows kept (rating >= %g)", len(pairs), len(rows), config.data.min_rating)
        return [family.encode(p, s) for p, s in pairs]

    def collate(self, examples: list[dict[str, Any]], family: Family) -> dict[str, Any]:
        return family.collate(examples)

    def loss(self, model: Any, batch: dict[str, Any], family: Family) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logp, n = family.sequence_logprobs(model, batch)
        return -logp.sum() / n.sum().clamp(min=1), {}

    def prepare(self, trainer: Any, datasets: list[list[dict[str, Any]]], family: Family,
                run_dir: Storage | None = None) -> None:
        return None

    def save(self, directory: Path) -> None:
        return None

    def restore(self, directory: Path) -> None:
        return None
