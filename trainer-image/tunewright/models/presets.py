"""Tiny random-weight base models built from configs, for the demo, tests and benchmarks.

A preset is materialised once into a directory (config, weights, tokenizer) and then loaded through the
same `from_pretrained` path as any real model. Weights come from a fixed seed, so every process (a retried
pod, a resumed run) gets the identical base model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tunewright.models.tokenizer import byte_tokenizer


def _llama(hidden: int, layers: int, heads: int, vocab: int) -> Any:
    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=max(vocab, len(tokenizer)), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=1024, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config), tokenizer


def _musicgen() -> Any:
    from tunewright.models.musicgen import tiny_musicgen  # the audio stack only when asked for

    return tiny_musicgen()


# name -> builder returning (model, processor). Other families register theirs here too.
PRESETS: dict[str, Callable[[], Any]] = {
    "tiny-llama": lambda: _llama(hidden=64, layers=2, heads=4, vocab=512),
    "small-llama": lambda: _llama(hidden=256, layers=4, heads=8, vocab=8192),
    "tiny-musicgen": _musicgen,
}


def preset_cache() -> Path:
    return Path(os.environ.get("TUNEWRIGHT_CACHE", Path.home() / ".cache" / "tunewright")) / "presets"


def builder_digest() -> str:
    """A digest of the code that builds presets (this package): editing it never reuses stale cached weights."""
    sources = sorted(Path(__file__).parent.glob("*.py"))
    return hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:10]


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """`target`, built by `build(tmp)` into a private sibling directory and renamed into place, so concurrent
    processes (several ranks, retried pods) never see a half-written directory."""
    if (target / "config.json").exists():
        return target
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def materialise(name: str) -> Path:
    """The directory holding preset `name`, built on first use from a fixed seed."""

    def build(tmp: Path) -> None:
        state = torch.random.get_rng_state()
        torch.manual_seed(1234)
        try:
            model, processor = PRESETS[name]()
        finally:
            torch.random.set_rng_state(state)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)

    return build_once(preset_cache() / f"{name}-{builder_digest()}", build)
