"""The HF Trainer, with the loss delegated to an objective, the objective's metrics logged and its state
(e.g. cached reference scores) saved into each checkpoint and restored on resume."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from tunewright.training.family import Family
from tunewright.training.objectives.base import Objective


class ExampleDataset(Dataset):
    """Pre-encoded examples; the Trainer's sampler decides the order (seeded, so resume replays it)."""

    def __init__(self, examples: list[dict[str, Any]]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]


class ObjectiveTrainer(Trainer):
    def __init__(self, *args: Any, objective: Objective, family: Family, **kwargs: Any):
        super().__init__(*args, data_collator=lambda ex: objective.collate(ex, family), **kwargs)
        self.objective = objective
        self.family = family
        self.loss_is_scaled_for_ga = False  # our losses are per micro-batch means: let HF divide by GA steps
        self.tokens_seen = 0
        self._metric_sums: dict[str, dict[str, list[float]]] = {"train": defaultdict(list),
                                                                "eval": defaultdict(list)}

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        if isinstance(resume_from_checkpoint, str):
            self.objective.restore(Path(resume_from_checkpoint))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:  # process 0: every process holds the same objective state
            folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            self.objective.save(Path(self._get_output_dir(trial=trial)) / folder)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        loss, metrics = self.objective.loss(model, inputs, self.family)
        split = "train" if model.training else "eval"
        if split == "train":
            self.tokens_seen += self.family.num_tokens(inputs)
        for key, value in metrics.items():
            self._metric_sums[split][key].append(float(value.detach().float().mean()))
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[torch.Tensor, None, None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        split = "eval" if "eval_loss" in logs else "train"
        prefix = "eval_" if split == "eval" else ""
        for key, values in self._metric_sums[split].items():
            if values:
                logs[prefix + key] = sum(values) / len(values)
        self._metric_sums[split].clear()
        super().log(logs, start_time)
