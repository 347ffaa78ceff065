"""Base vs adapter outputs for held-out prompts, for the report page: text generations for causal LMs,
WAV clips for MusicGen.

Both sides of a pair start from the same seed, so the only difference between them is the adapter. The
result is the report's `listen` entry; clips are written as 16-bit PCM WAV files under `samples/` of the
directory given, and the entry names them by that relative path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tunewright.data.rows import Row
from tunewright.reporting.audio import write_wav

PROMPTS = 3  # held-out prompts shown
TEXT_TOKENS = 48
CLIP_SECONDS = 2.0
SAMPLES = "samples"


def held_out_prompts(rows: list[Row], limit: int = PROMPTS) -> list[str]:
    """The first distinct prompts of the validation split (deterministic: the split is)."""
    prompts: list[str] = []
    for row in rows:
        if row.prompt not in prompts:
            prompts.append(row.prompt)
    return prompts[:limit]


@contextlib.contextmanager
def _evaluating(model: Any) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def generate_text(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = TEXT_TOKENS) -> str:
    """Greedy continuation of `prompt`, encoded as training encodes it (bos + prompt)."""
    prefix = tokenizer.bos_token or ""
    ids = tokenizer(prefix + prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def generate_clips(model: Any, processor: Any, prompts: list[str], seed: int,
                   seconds: float = CLIP_SECONDS) -> list[Any]:
    """One sampled MusicGen clip per prompt (one batch), as float numpy arrays (mono: the first channel)."""
    inputs = processor(text=prompts, padding=True, return_tensors="pt").to(model.device)
    frames = round(seconds * model.config.audio_encoder.frame_rate)
    torch.manual_seed(seed)
    with torch.no_grad():
        audio = model.generate(**inputs, do_sample=True, max_new_tokens=frames)
    return [clip[0].float().cpu().numpy() for clip in audio]


def listen(model: Any, processor: Any, family: str, rows: list[Row], seed: int, out_dir: Path) -> dict[str, Any]:
    """The report's `listen` entry: for each held-out prompt, what the base model and the adapter make of it."""
    prompts = held_out_prompts(rows)
    outputs: dict[str, list[str]] = {}
    with _evaluating(model):
        for side in ("base", "adapter"):
            with model.disable_adapter() if side == "base" else contextlib.nullcontext():
                if family == "musicgen":
                    rate = model.config.audio_encoder.sampling_rate
                    names = [f"{SAMPLES}/{i}-{side}.wav" for i in range(1, len(prompts) + 1)]
                    clips = generate_clips(model, processor, prompts, seed) if prompts else []
                    for name, clip in zip(names, clips, strict=True):
                        write_wav(out_dir / name, clip, rate)
                    outputs[side] = names
                else:
                    outputs[side] = [generate_text(model, processor, p) for p in prompts]
    return {"kind": "audio" if family == "musicgen" else "text", "seed": seed,
            "prompts": [{"prompt": p, "base": b, "adapter": a}
                        for p, b, a in zip(prompts, outputs["base"], outputs["adapter"], strict=True)]}
