"""MusicGen SFT: tunewright (codec codes and text-encoder states computed once and cached) vs a baseline
that runs the text encoder and the codec on every batch, as common MusicGen fine-tuning scripts do.

Same model (tiny-musicgen), same LoRA on the decoder, same clips, batch and steps. The baseline decodes
and resamples every clip once up front (generous to it: many scripts decode per step too), so the only
per-step difference is the frozen encoders' forward passes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.measure import StepClock
from bench.sides import run_tunewright, tunewright_config


def _dataset(p: dict[str, Any], directory: Path) -> Path:
    from tunewright.data.synthetic_audio import write_dataset

    return write_dataset(directory, "rated", prompts=p["prompts"], per_prompt=p["per_prompt"], seconds=p["seconds"])


def _targets(p: dict[str, Any]) -> dict[str, Any]:
    from transformers import AutoConfig

    from tunewright.models.musicgen import default_target_modules
    from tunewright.models.presets import materialise

    codebooks = AutoConfig.from_pretrained(materialise(p["model"])).decoder.num_codebooks
    return {**p, "target_modules": default_target_modules(codebooks)}


def tunewright(p: dict[str, Any]) -> dict[str, Any]:
    p = _targets(p)
    seen: dict[str, StepClock] = {}

    def hook(trainer: Any) -> None:
        seen["clock"] = StepClock(p["warmup"])
        trainer.add_callback(seen["clock"])

    with tempfile.TemporaryDirectory(prefix="musicgen-bench-") as tmp:
        path = _dataset(p, Path(tmp))
        run_tunewright(tunewright_config(p, "sft"), path, "rated", hook, modality="audio")
    return {"steps_per_s": seen["clock"].steps_per_second()}


class EncodeEveryStep:
    """The baseline's loss: text encoder + codec forward (frozen, no grad), delay pattern, decoder loss."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        from tunewright.training.musicgen import delayed_labels

        with torch.no_grad():
            states = model.text_encoder(input_ids=batch["input_ids"],
                                        attention_mask=batch["attention_mask"]).last_hidden_state
            codes = model.audio_encoder.encode(batch["waves"]).audio_codes[0]  # (batch, codebooks, frames)
        labels = torch.stack([delayed_labels(c, self.pad_id) for c in codes])
        labels = labels.masked_fill(labels == self.pad_id, -100)  # the delay pattern's empty corners
        return model(encoder_outputs=(states,), attention_mask=batch["attention_mask"], labels=labels).loss


def baseline(p: dict[str, Any]) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, set_seed

    from bench.sides import lora_settings
    from tunewright.data.audio_files import conform, decode_audio
    from tunewright.data.store import parse_rows
    from tunewright.models.musicgen import load_musicgen
    from tunewright.models.presets import materialise

    p = _targets(p)
    model, processor = load_musicgen(str(materialise(p["model"])))
    rate = model.config.audio_encoder.sampling_rate
    with tempfile.TemporaryDirectory(prefix="musicgen-bench-") as tmp:
        path = _dataset(p, Path(tmp))
        rows = [r for r in parse_rows(path.read_text().splitlines(), "rated", str(path)) if r.rating >= 4]
        examples = []
        for r in rows:
            wave, sr = decode_audio((Path(tmp) / r.completion).read_bytes())
            examples.append({"prompt": r.prompt, "wave": torch.from_numpy(conform(wave, sr, rate, 1))})

    tokenizer = processor.tokenizer

    def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        text = tokenizer([e["prompt"] for e in batch], padding=True, return_tensors="pt")
        return {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"],
                "waves": torch.stack([e["wave"] for e in batch])}

    loss = EncodeEveryStep(model.config.decoder.pad_token_id)

    class BaselineTrainer(Trainer):
        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            value = loss(model, inputs)
            return (value, None) if return_outputs else value

    set_seed(42)
    model = get_peft_model(model, LoraConfig(**lora_settings(p)))
    with tempfile.TemporaryDirectory(prefix="musicgen-bench-") as out:
        args = TrainingArguments(output_dir=out, use_cpu=True, max_steps=p["steps"],
                                 per_device_train_batch_size=p["batch"], learning_rate=p["lr"], report_to=[],
                                 disable_tqdm=True, remove_unused_columns=False, save_strategy="no", seed=42)
        trainer = BaselineTrainer(model=model, args=args, train_dataset=examples, data_collator=collate)
        clock = StepClock(p["warmup"])
        trainer.add_callback(clock)
        trainer.train()
    return {"steps_per_s": clock.steps_per_second()}
