"""End-to-end MusicGen adapters on tiny-musicgen: SFT, DPO, encoding cache, resume, PEFT adapter + generate."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from peft import PeftModel

from support.browser import ARTIFACTS, check_page
from tunewright.config import TrainingConfig
from tunewright.data.split import split_by_prompt
from tunewright.data.store import DatasetStore
from tunewright.data.synthetic_audio import REGISTERS, write_dataset
from tunewright.models.loading import load_base
from tunewright.reporting.audio import read_wav
from tunewright.runs import RESULT
from tunewright.storage import Storage, open_storage
from tunewright.training import callbacks
from tunewright.training import run as run_module
from tunewright.training.listen import listen
from tunewright.training.musicgen import ENCODER_FORWARDS, MusicgenFamily
from tunewright.training.run import Outcome, Run, TrainingInterrupted


def _run(config: TrainingConfig, root: Storage, run_id: str, **kwargs: Any) -> tuple[Outcome, Counter[str]]:
    """Execute a run in this process; returns its outcome and the frozen-encoder forwards its training made
    (not counted: the report's clips, generated after training, which run the text encoder once per side)."""
    before, listening = Counter(ENCODER_FORWARDS), Counter()

    def counted_listen(*args: Any, **kw: Any) -> Any:
        start = Counter(ENCODER_FORWARDS)
        try:
            return listen(*args, **kw)
        finally:
            listening.update(Counter(ENCODER_FORWARDS) - start)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "listen", counted_listen)
        outcome = Run(config, root, run_id=run_id, metrics_port=None, display=False, **kwargs).execute()
    return outcome, ENCODER_FORWARDS - before - listening


def _adapter_dir(root: Storage, outcome: Outcome, tmp: Path) -> Path:
    return root.child("runs", outcome.run_id, "adapter").download_dir("", tmp / outcome.run_id)


@pytest.fixture(scope="module")
def sft(audio_root: Storage, musicgen_config: Callable[..., TrainingConfig]) -> dict[str, Any]:
    """An SFT run on `clips`, recording the encoder forwards seen at every epoch end."""
    at_epoch_end: list[Counter[str]] = []
    original = callbacks.EpochEndCallback.on_epoch_end

    def record(self: Any, *args: Any, **kwargs: Any) -> None:
        at_epoch_end.append(Counter(ENCODER_FORWARDS))
        original(self, *args, **kwargs)

    before = Counter(ENCODER_FORWARDS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(callbacks.EpochEndCallback, "on_epoch_end", record)
        outcome, forwards = _run(musicgen_config("clips"), audio_root, "sft")
    return {"outcome": outcome, "forwards": forwards, "epochs": [c - before for c in at_epoch_end]}


def test_report_page_plays_base_and_adapter_clips_in_chromium(sft: dict[str, Any], audio_root: Storage) -> None:
    outcome = sft["outcome"]
    listen = outcome.report["listen"]
    assert listen["kind"] == "audio" and len(listen["prompts"]) == 3
    adapter = open_storage(outcome.result.adapter_uri)
    for item in listen["prompts"]:
        base, rate = read_wav(adapter.read_bytes(item["base"]))
        tuned, _ = read_wav(adapter.read_bytes(item["adapter"]))
        assert rate == 8000 and len(base) == len(tuned) >= 8000  # 2 s clips at tiny-musicgen's 8 kHz
        assert np.abs(base - tuned).max() > 0  # same seed: only the adapter differs

    seen = check_page(outcome.result.report_page_uri, ARTIFACTS / "report-musicgen.png")
    assert seen["errors"] == []
    # 3 curves (loss, learning rate, grad norm) + a spectrogram per clip
    assert len(seen["images"]) == 3 + 2 * 3, seen["images"]
    assert all(i["complete"] and i["width"] > 100 and i["height"] > 100 for i in seen["images"]), seen["images"]
    assert len(seen["audio"]) == 6
    for audio in seen["audio"]:
        assert audio["error"] is None and audio["canPlay"] in ("maybe", "probably"), audio
        assert audio["readyState"] >= 1 and audio["duration"] == pytest.approx(len(base) / rate, abs=0.05), audio
    assert seen["screenshot"].stat().st_size > 20_000


def test_sft_lowers_heldout_nll_of_high_rated_clips(sft: dict[str, Any]) -> None:
    report = sft["outcome"].report
    assert report["baseModel"]["family"] == "musicgen" and report["dataset"]["modality"] == "audio"
    assert report["samples"]["validationExamples"] > 0
    # Held-out loss = mean NLL per codec token of the high-rated clips of unseen prompts.
    assert report["bestEvalLoss"] < report["initialEvalLoss"] - 0.5, report  # measured: 4.18 -> 3.27


def test_each_clip_and_prompt_is_encoded_once_and_no_epoch_runs_the_encoders(
        sft: dict[str, Any], audio_root: Storage) -> None:
    samples = sft["outcome"].report["samples"]
    clips = samples["trainExamples"] + samples["validationExamples"]  # SFT keeps one distinct clip per example
    prompts = len({r.prompt for r in DatasetStore(audio_root).rows("clips")})
    assert sft["forwards"] == Counter(codec=clips, text=prompts)
    assert len(sft["epochs"]) == 4
    assert all(at_end == sft["forwards"] for at_end in sft["epochs"])  # all encoding happened before epoch 1
    cache = [k for k in audio_root.child("datasets", "clips").list("cache") if k.endswith(".safetensors")]
    assert len(cache) == clips + prompts


def test_adapter_loads_on_the_base_and_changes_generation(sft: dict[str, Any], audio_root: Storage,
                                                          tmp_path: Path) -> None:
    base, processor, _ = load_base("tiny-musicgen")
    model = PeftModel.from_pretrained(base, str(_adapter_dir(audio_root, sft["outcome"], tmp_path)))
    inputs = processor(text=["a bright whistle", "a dark hum"], padding=True, return_tensors="pt")
    tuned = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    with model.disable_adapter():
        plain = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    fresh, _, _ = load_base("tiny-musicgen")
    assert torch.equal(plain, fresh.generate(**inputs, max_new_tokens=20, do_sample=False))
    assert tuned.shape == plain.shape and tuned.shape[0] == 2
    assert not torch.allclose(tuned, plain)


def test_dpo_learns_the_prompt_register_rule_on_heldout_prompts(
        audio_root: Storage, musicgen_config: Callable[..., TrainingConfig], tmp_path: Path) -> None:
    config = musicgen_config("pairs", method="dpo", **{"training.epochs": 6, "training.lrScheduler": "constant"})
    outcome, _ = _run(config, audio_root, "dpo")
    # Score the published adapter on the held-out pairs, against the base model (DPO's implicit reward).
    base, processor, _ = load_base("tiny-musicgen")
    family = MusicgenFamily(processor, base, config, audio_root.child("datasets", "pairs"))
    model = PeftModel.from_pretrained(base, str(_adapter_dir(audio_root, outcome, tmp_path))).eval()
    _, held_out = split_by_prompt(DatasetStore(audio_root).rows("pairs"), 0.25)
    assert len(held_out) >= 12
    batch = family.collate([family.encode(r.prompt, r.chosen) for r in held_out]
                           + [family.encode(r.prompt, r.rejected) for r in held_out])
    with torch.no_grad():
        tuned, _ = family.sequence_logprobs(model, batch)
        with model.disable_adapter():
            ref, _ = family.sequence_logprobs(model, batch)
    chosen, rejected = (tuned - ref).chunk(2)
    right = chosen > rejected
    accuracy = float(right.float().mean())
    assert accuracy >= 0.9, f"held-out preference accuracy {accuracy:.2f}"
    # Half the prompts want the high clip, half the low one: only a prompt-dependent preference is right
    # on both (a model that always preferred one register would score ~0 on the other).
    for register, words in REGISTERS.items():
        asks = torch.tensor([r.prompt.split()[1] in words for r in held_out])
        assert asks.any() and float(right[asks].float().mean()) >= 0.8, register


def test_resume_after_sigterm_continues_from_the_checkpoint_without_encoding_again(
        audio_root: Storage, musicgen_config: Callable[..., TrainingConfig], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    config = musicgen_config("clips", **{"training.epochs": 2, "checkpointing.everySteps": 2})
    reference, _ = _run(config, audio_root, "uninterrupted")

    original = callbacks.EpochEndCallback.on_step_end

    def evict_at_step_3(self: Any, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # what the kubelet sends; the run checkpoints and stops
        original(self, args, state, control, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(callbacks.EpochEndCallback, "on_step_end", evict_at_step_3)
        with pytest.raises(TrainingInterrupted, match="at step 3"):
            _run(config, audio_root, "evicted")
    resumed, forwards = _run(config, audio_root, "evicted", resume="latest")
    assert resumed.report["resumedFrom"] == "checkpoint-3"
    assert resumed.report["steps"] == reference.report["steps"]
    assert forwards == Counter()  # codes and prompt states came from the dataset's cache
    a = PeftModel.from_pretrained(load_base("tiny-musicgen")[0], str(_adapter_dir(audio_root, reference, tmp_path)))
    b = PeftModel.from_pretrained(load_base("tiny-musicgen")[0], str(_adapter_dir(audio_root, resumed, tmp_path)))
    for (name, wa), (_, wb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        if "lora_" in name:
            torch.testing.assert_close(wa, wb, atol=1e-5, rtol=1e-4)


def test_ranking_orders_heldout_clips_by_fit_to_the_prompt(
        audio_root: Storage, musicgen_config: Callable[..., TrainingConfig]) -> None:
    # Lists from the rated clips of each prompt: its register's tone > noise > the other register's tone.
    config = musicgen_config("clips", method="ranking", **{"training.epochs": 6, "training.lrScheduler": "constant",
                                                         "ranking.loss": "listwise"})
    outcome, _ = _run(config, audio_root, "ranking")
    report = outcome.report
    assert report["bestEvalLoss"] < report["initialEvalLoss"] / 2
    lines = [json.loads(x) for x in audio_root.child("runs", "ranking").read_text("metrics.jsonl").splitlines()]
    at_best = next(e for e in lines if e.get("step") == report["bestStep"] and "eval_loss" in e)
    assert at_best["eval_ranking/pairwise_accuracy"] >= 0.9  # held-out lists, ordered by the adapter's rewards


def test_audio_dataset_on_s3_trains_and_later_runs_reuse_its_encodings(
        s3_root: str, tmp_path: Path, musicgen_config: Callable[..., TrainingConfig]) -> None:
    root = open_storage(s3_root)
    DatasetStore(root).import_file("tones", write_dataset(tmp_path, "rated", prompts=8, per_prompt=1), "rated",
                                   modality="audio")
    config = musicgen_config("tones", **{"training.maxSteps": 2})
    first, encoded = _run(config, root, "first")
    assert encoded["codec"] > 0 and encoded["text"] > 0
    cache = root.child("datasets", "tones").list("cache")
    assert len(cache) == encoded["codec"] + encoded["text"]
    _, again = _run(config, root, "second")
    assert again == Counter()  # every clip and prompt came from the encodings stored next to the dataset
    assert first.result.adapter_uri.startswith("s3://") and root.exists(f"runs/second/{RESULT}")
