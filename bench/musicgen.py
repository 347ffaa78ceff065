"""MusicGen SFT: tunewright (codec codes and text-encoder states computed once and cached) vs a baseline
that runs the text encoder and the codec encoder on every batch, as common MusicGen fine-tuning scripts do
(audiocraft-based trainers encode each batch's audio with the compression model and its text with T5).

Same model, same LoRA on the decoder (tunewright's default targets), same clips, prompts, batch and steps.
The baseline decodes and resamples every clip once up front (generous to it: many scripts read and
resample per step too), so the only per-step difference is the frozen encoders' forward passes.

The model is musicgen-small's architecture with random weights and every width divided by 4 (`WIDTH`):
depths, heads, the audio format (32 kHz, 50 codec frames/s, 4 codebooks of 2048) and the clip length are
kept, so each part's compute shrinks by about the same factor (widths², ~1/16) and their proportions hold.
Measured on the bench machine (1 torch thread, fp32, batch 2 x 2 s clips, 16-token prompts):

    widths      decoder LoRA step   EnCodec encode   T5 encode   baseline / cached
    full (1x)   6.34 s              1.61 s           0.23 s      1.29x
    1/4         0.80 s              0.15 s           0.03 s      1.22x
    depth 1/4   0.21 s              0.13 s           0.01 s      1.64x  (shrinks the decoder only: not used)

The speed-up of caching is bounded by (decoder step + encoders) / decoder step; with musicgen-small's
proportions the decoder's training step dominates.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.measure import StepClock
from bench.sides import run_tunewright, tunewright_config

WIDTH = 0.25
SAMPLE_RATE = 32_000
# A caption as long as typical ones (musicgen-small's T5 sees ~10-20 tokens for a short description); the
# word tokenizer maps unknown words to <unk>, which costs the text encoder the same.
CAPTION = "recorded live in a small room with a warm tone and a slow steady tempo"


def _scaled(n: int) -> int:
    return max(1, round(n * WIDTH))


def build_model(directory: Path) -> None:
    """musicgen-small's configuration (facebook/musicgen-small: decoder 1024 wide, 24 layers, 16 heads, ffn
    4096, 4 codebooks x 2048; T5-base text encoder: 768 wide, 12 layers, 12 heads, ffn 3072; EnCodec 32 kHz:
    64 filters, hidden 128, strides 8-5-4-4, 2 LSTM layers, codebook dim 128) with widths x WIDTH."""
    from transformers import EncodecConfig, MusicgenDecoderConfig, T5Config

    from tunewright.models.musicgen import assemble, word_tokenizer

    tokenizer = word_tokenizer()
    text = T5Config(vocab_size=len(tokenizer), d_model=_scaled(768), d_kv=_scaled(64), d_ff=_scaled(3072),
                    num_layers=12, num_heads=12, pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    codec = EncodecConfig(sampling_rate=SAMPLE_RATE, codebook_size=2048, codebook_dim=_scaled(128),
                          hidden_size=_scaled(128), num_filters=_scaled(64), upsampling_ratios=[8, 5, 4, 4],
                          num_lstm_layers=2, target_bandwidths=[2.2], compress=2, use_causal_conv=False,
                          pad_mode="reflect", norm_type="weight_norm")
    decoder = MusicgenDecoderConfig(vocab_size=2048, hidden_size=_scaled(1024), num_hidden_layers=24,
                                    num_attention_heads=16, ffn_dim=_scaled(4096), num_codebooks=4,
                                    max_position_embeddings=2048, pad_token_id=2048, bos_token_id=2048,
                                    decoder_start_token_id=2048)
    state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    try:
        model, processor = assemble(text, codec, decoder, tokenizer)
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


def model_dir() -> Path:
    """The model, built once (per version of this file) into the preset cache; both sides load it from there."""
    from tunewright.models.presets import build_once, preset_cache

    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:10]
    return build_once(preset_cache().parent / "bench" / f"musicgen-small-w{WIDTH:g}-{digest}", build_model)


def _dataset(p: dict[str, Any], directory: Path) -> Path:
    from tunewright.data.synthetic_audio import write_dataset

    path = write_dataset(directory, "rated", prompts=p["prompts"], per_prompt=p["per_prompt"],
                         seconds=p["seconds"], sample_rate=SAMPLE_RATE)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "prompt": f"{r['prompt']} {CAPTION}"}) + "\n" for r in rows))
    return path


def _params(p: dict[str, Any]) -> dict[str, Any]:
    from tunewright.models.musicgen import default_target_modules

    return {**p, "model": str(model_dir()), "target_modules": default_target_modules(4)}


def tunewright(p: dict[str, Any]) -> dict[str, Any]:
    p = _params(p)
    seen: dict[str, StepClock] = {}

    def hook(trainer: Any) -> None:
        seen["clock"] = StepClock(p["warmup"])
        trainer.add_callback(seen["clock"])

    with tempfile.TemporaryDirectory(prefix="musicgen-bench-") as tmp:
        path = _dataset(p, Path(tmp))
        run_tunewright(tunewright_config(p, "sft"), path, "rated", hook, modality="audio")
    clock = seen["clock"]
    return {"steps_per_s": clock.steps_per_second(), "mean_steps_per_s": clock.mean_steps_per_second(),
            "seconds_to_first_step": clock.first_step_process_s, "step_durations": list(clock.durations().values())}


class EncodeEveryStep:
    """The baseline's loss: text encoder + codec forward (frozen, no grad), delay pattern, decoder loss."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.encoder_seconds: list[float] = []  # per call: the frozen encoders' share of the step

    def __call__(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        from tunewright.training.musicgen import delayed_labels

        began = time.perf_counter()
        with torch.no_grad():
            states = model.text_encoder(input_ids=batch["input_ids"],
                                        attention_mask=batch["attention_mask"]).last_hidden_state
            codes = model.audio_encoder.encode(batch["waves"]).audio_codes[0]  # (batch, codebooks, frames)
        self.encoder_seconds.append(time.perf_counter() - began)
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

    p = _params(p)
    model, processor = load_musicgen(p["model"])
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
    measured = loss.encoder_seconds[p["warmup"]:clock.last_step]  # the window's steps
    durations = list(clock.durations().values())
    return {"steps_per_s": clock.steps_per_second(), "mean_steps_per_s": clock.mean_steps_per_second(),
            "seconds_to_first_step": clock.first_step_process_s, "encoder_share": sum(measured) / sum(durations),
            "step_durations": durations, "encoder_seconds": measured}
