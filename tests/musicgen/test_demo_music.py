"""`make demo-music` end to end: import, SFT and DPO on tiny-musicgen, held-out numbers, base-vs-adapter clips."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tunewright.data.store import DatasetStore
from tunewright.demo_music import CLIP_FRAMES, DATASET, heldout_rows, main
from tunewright.registry import Registry
from tunewright.storage import open_storage

REPO = Path(__file__).resolve().parents[2]


def test_make_demo_music_runs_this_module() -> None:
    recipe = re.search(r"^demo-music:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M)
    assert recipe and "-m tunewright.demo_music" in recipe.group(1)


def test_demo_music_learns_the_caption_rule_and_writes_clips(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    storage = f"file://{tmp_path}/store"
    result = main(["--storage", storage, "--out", str(tmp_path / "clips")])
    out = capsys.readouterr().out

    nll, accuracy = result.heldout_nll, result.likelihood_accuracy
    assert nll["sft"] < nll["base"] - 0.5, nll  # measured: 4.18 -> 3.27
    # Half the held-out captions ask for high clips, half for low ones: a preference that ignores the caption
    # scores ~0.5; only the caption-tied rule scores high.
    assert result.heldout_pairs >= 8
    assert accuracy["dpo"] >= 0.9 and accuracy["dpo"] >= accuracy["base"] + 0.3, accuracy  # measured 0.50 -> 1.00
    assert result.reward_accuracy >= 0.9
    assert f"base {nll['base']:.3f} → SFT adapter {nll['sft']:.3f}" in " ".join(out.split())
    assert f"DPO {accuracy['dpo']:.2f}" in out

    root = open_storage(storage)
    assert {(r.name, r.method) for r in Registry(root).list()} == {("demo-tones-sft", "sft"), ("demo-tones-dpo", "dpo")}
    meta = DatasetStore(root).meta(DATASET)
    assert (meta.kind, meta.modality) == ("rated", "audio")

    held_out = {r.prompt for r in heldout_rows(DatasetStore(root))}
    assert len(result.clips) == 2 and set(result.clips) <= held_out
    for caption, paths in result.clips.items():
        assert [p.name.rsplit("-", 1)[1] for p in paths] == ["base.wav", "sft.wav", "dpo.wav"], caption
        waves = []
        for path in paths:
            wave, rate = sf.read(path, dtype="float32")
            assert rate == 8000 and len(wave) >= CLIP_FRAMES * 160 * 0.9, path  # 160 samples per codec frame
            waves.append(wave[: CLIP_FRAMES * 100])
        base, sft, dpo = waves
        assert not np.allclose(base, sft) and not np.allclose(base, dpo)  # same seed, the adapter changes the clip
