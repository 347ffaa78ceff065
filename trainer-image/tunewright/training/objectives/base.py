"""An objective = how dataset rows become training examples + a loss over a batch (TRL's config + loss idea)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from tunewright.config import TrainingConfig
from tunewright.data.rows import Row
from tunewright.storage import Storage
from tunewright.training.family import Family


class DataError(ValueError):
    """The dataset cannot feed this objective (wrong kind, nothing left after filtering, ...)."""


class Objective(Protocol):
    name: str
    kinds: tuple[str, ...]  # dataset kinds this objective accepts

    def examples(self, rows: Sequence[Row], family: Family, config: TrainingConfig) -> list[dict[str, Any]]:
        """Training examples from rows; skipped rows are counted and logged, never crash training."""

    def collate(self, examples: list[dict[str, Any]], family: Family) -> dict[str, Any]:
        """A batch from examples."""

    def loss(self, model: Any, batch: dict[str, Any], family: Family) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scalar loss, metrics to average and log, e.g. rewards/accuracies)."""

    def prepare(self, trainer: Any, datasets: list[list[dict[str, Any]]], family: Family,
                run_dir: Storage | None = None) -> None:
        """Called once before training (e.g. to set up the lazily filled reference scores). May do nothing."""

    def save(self, directory: Path) -> None:
        """Write the objective's state into a checkpoint directory (e.g. the reference scores so far)."""

    def restore(self, directory: Path) -> None:
        """Take back what `save` wrote, when resuming from that checkpoint."""
