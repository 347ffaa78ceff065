"""The README's "Text to music" section cannot drift: its generation snippet runs on the tiny preset with a
registered adapter, and its dataset examples are the files in examples/."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import soundfile as sf
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file

from tunewright.config import TrainingConfig
from tunewright.models.presets import materialise
from tunewright.registry import Registry
from tunewright.storage import Storage
from tunewright.training.run import Run

REPO = Path(__file__).resolve().parents[2]
SECTION = re.search(r"<!-- section:music -->(.*)<!-- /section:music -->", (REPO / "README.md").read_text(), re.S)


def _block_after(marker: str, language: str) -> str:
    assert SECTION, "README has no music section"
    found = re.search(rf"<!-- {re.escape(marker)} -->\n```{language}\n(.*?)```", SECTION.group(1), re.S)
    assert found, f"README's music section has no ```{language} block after <!-- {marker} -->"
    return found.group(1)


@pytest.mark.parametrize("name", ["music-rated.jsonl", "music-preference.jsonl", "music-ranked.jsonl"])
def test_readme_dataset_examples_are_the_example_files(name: str) -> None:
    assert _block_after(f"example:{name}", "json") == (REPO / "examples" / name).read_text()


def test_readme_generation_snippet_runs_with_a_registered_adapter(
        audio_root: Storage, musicgen_config: Callable[..., TrainingConfig], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    Run(musicgen_config("clips", name="readme-tones", **{"training.maxSteps": 2}), audio_root,
        metrics_port=None, display=False).execute()
    record = Registry(audio_root).get("readme-tones")
    adapter_dir = record.uri.removeprefix("file://")
    code = _block_after("snippet:music-generate", "python")
    # The snippet's two settings, pointed at the tiny preset and the adapter just registered; nothing else changes.
    code, n = re.subn(r'^base_model = "[^"]*"', f"base_model = {str(materialise(record.base_model))!r}", code,
                      flags=re.M)
    code, m = re.subn(r'^adapter_dir = "[^"]*"', f"adapter_dir = {adapter_dir!r}", code, flags=re.M)
    assert (n, m) == (1, 1)

    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md (snippet:music-generate)", "exec"), namespace)

    model = namespace["model"]
    assert isinstance(model, PeftModel)
    registered = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    loaded = get_peft_model_state_dict(model)
    assert sorted(loaded) == sorted(registered) and all(torch.equal(loaded[k], registered[k]) for k in registered)
    assert any(registered[k].abs().sum() > 0 for k in registered if "lora_B" in k)  # trained (B starts at 0)

    wave, rate = sf.read(tmp_path / "clip.wav", dtype="float32")
    assert rate == 8000  # the tiny preset's codec rate (32 kHz for musicgen-small)
    assert abs(len(wave) / rate - 10.0) < 0.5  # max_new_tokens=500 at 50 frames/s
