"""Resolve a base-model reference (preset, local dir, s3:// URI or hub id) and load it with from_pretrained."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tunewright.models.presets import PRESETS, build_once, materialise, preset_cache
from tunewright.storage import open_storage


class ModelLoadError(RuntimeError):
    pass


def resolve(ref: str) -> str:
    """A local path or hub id that `from_pretrained` understands."""
    if ref in PRESETS:
        return str(materialise(ref))
    if ref.startswith("s3://"):
        return str(_download(ref))
    if ref.startswith("file://"):
        return ref.removeprefix("file://")
    return ref  # local directory or hub id


def _download(uri: str) -> Path:
    """Copy a model directory from object storage into the local cache (once per URI)."""
    storage = open_storage(uri)

    def download(tmp: Path) -> None:
        if not storage.list(""):
            raise ModelLoadError(f"no model files under {uri}")
        storage.download_dir("", tmp)

    return build_once(preset_cache().parent / "models" / hashlib.sha256(uri.encode()).hexdigest()[:16], download)


def load_base(ref: str, revision: str | None = None) -> tuple[Any, Any, str]:
    """(model, processor, model_type). The processor is the tokenizer for causal LMs."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve(ref)
    try:
        config = AutoConfig.from_pretrained(path, revision=revision)
    except OSError as err:
        where = "a preset name, a local directory, an s3:// URI or a Hugging Face id"
        known = ", ".join(sorted(PRESETS))
        raise ModelLoadError(f"cannot load base model {ref!r} ({where}; presets: {known}): {err}") from None
    if config.model_type == "musicgen":
        from tunewright.models.musicgen import load_musicgen

        model, processor = load_musicgen(path, revision)
        return model, processor, "musicgen"
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype="float32")
    return model, tokenizer, "causal-lm"
