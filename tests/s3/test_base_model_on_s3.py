"""A base model given as an s3:// URI is downloaded once and loaded with the real from_pretrained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunewright.models.loading import ModelLoadError, load_base
from tunewright.models.presets import materialise
from tunewright.storage import open_storage


def test_base_model_from_s3_equals_the_local_copy(s3_root: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    local = materialise("tiny-llama")
    monkeypatch.setenv("TUNEWRIGHT_CACHE", str(tmp_path / "cache"))  # a fresh cache: the download really happens
    uri = f"{s3_root}/models/tiny-llama"
    open_storage(uri).upload_dir(local, "")
    model, tokenizer, family = load_base(uri)
    reference, _, _ = load_base(str(local))
    assert family == "causal-lm" and len(tokenizer) == 259
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 1  # one complete copy, no leftovers


def test_empty_s3_prefix_is_a_clear_error(s3_root: str) -> None:
    with pytest.raises(ModelLoadError, match="no model files under s3://"):
        load_base(f"{s3_root}/models/nothing-here")
