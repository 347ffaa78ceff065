"""Checkpoints, exact resume after SIGKILL, checkpoint-on-SIGTERM, early stopping and best-checkpoint retention."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from support.trainer import quick_config
from tunewright.config import TrainingConfig
from tunewright.storage import Storage
from tunewright.training.checkpoints import CheckpointStore
from tunewright.training.run import Run

# Mid-epoch checkpoints (19-20 steps per epoch, every 7 steps), dropout on so RNG state matters.
RESUME = {"training.epochs": 3, "training.batchSize": 4, "checkpointing.everySteps": 7, "lora.dropout": 0.1}


def _train_subprocess(root: Storage, config: TrainingConfig, run_id: str, tmp: Path) -> subprocess.Popen:
    path = tmp / f"{run_id}.json"
    path.write_text(json.dumps(config.to_dict()))
    cmd = [sys.executable, "-m", "tunewright.cli.train", "--config", str(path), "--storage", root.uri,
           "--run-id", run_id, "--resume", "auto", "--metrics-port", "0", "--quiet"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"trainer exited early: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _losses(root: Storage, run_id: str) -> dict[int, float]:
    lines = root.child("runs", run_id).read_text("metrics.jsonl").splitlines()
    steps = [json.loads(x) for x in lines if '"loss"' in x]
    assert len({s["step"] for s in steps}) == len(steps), "a step was logged twice"
    return {s["step"]: s["loss"] for s in steps}


def _adapter(root: Storage, run_id: str, tmp: Path) -> dict[str, torch.Tensor]:
    local = root.child("runs", run_id, "adapter").download_dir("", tmp / run_id)
    return load_file(str(local / "adapter_model.safetensors"))


def test_interval_restarts_with_each_epoch_so_an_epoch_end_is_not_saved_twice(root: Storage) -> None:
    # 10 steps an epoch, every 11 steps: multiples of 11 would checkpoint and evaluate at 10 and 11, 20 and 22.
    config = quick_config("songs", **{"training.maxSteps": 22, "checkpointing.everySteps": 11,
                                      "training.logEverySteps": 5, "checkpointing.keepLast": 10})
    outcome = Run(config, root, run_id="schedule", display=False).execute()
    assert [c["step"] for c in outcome.report["checkpoints"]] == [10, 20, 22]
    lines = [json.loads(x) for x in root.child("runs", "schedule").read_text("metrics.jsonl").splitlines()]
    assert [x["step"] for x in lines if "eval_loss" in x] == [10, 20, 22]


def test_sigkill_mid_epoch_then_resume_reproduces_the_uninterrupted_run(root: Storage, tmp_path: Path) -> None:
    config = quick_config("songs", **RESUME)
    reference = Run(config, root, run_id="uninterrupted", display=False).execute()

    proc = _train_subprocess(root, config, "killed", tmp_path)
    store = CheckpointStore(root.child("runs", "killed", "checkpoints"), keep_last=100, background=False)
    _wait_for(lambda: root.exists("runs/killed/checkpoints/checkpoint-14/manifest.json"), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not root.exists("runs/killed/result.json")
    killed_at = store.latest()
    assert killed_at is not None and killed_at.step % 19 != 0  # a mid-epoch checkpoint

    resumed = Run(config, root, run_id="killed", resume="latest", display=False).execute()
    assert resumed.report["resumedFrom"] == killed_at.name
    a, b = _losses(root, "uninterrupted"), _losses(root, "killed")
    assert sorted(b) == sorted(a)  # every step logged once, none lost
    after = [s for s in a if s > killed_at.step]
    assert after
    for step in after:
        assert abs(a[step] - b[step]) < 1e-4, f"step {step}: {a[step]} vs {b[step]}"
    wa, wb = _adapter(root, "uninterrupted", tmp_path), _adapter(root, "killed", tmp_path)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-5, rtol=1e-4)
    assert reference.report["steps"] == resumed.report["steps"]


def test_sigterm_commits_a_checkpoint_at_the_current_step_and_exits_143(root: Storage, tmp_path: Path) -> None:
    config = quick_config("songs", **{**RESUME, "training.epochs": 20, "checkpointing.everySteps": 500})
    proc = _train_subprocess(root, config, "evicted", tmp_path)
    _wait_for(lambda: root.exists("runs/evicted/progress.json")
              and json.loads(root.read_text("runs/evicted/progress.json"))["step"] >= 5, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err
    progress = json.loads(root.read_text("runs/evicted/progress.json"))
    store = CheckpointStore(root.child("runs", "evicted", "checkpoints"), keep_last=3, background=False)
    latest = store.latest()
    assert progress["state"] == "interrupted"
    assert latest is not None and latest.step == progress["step"] and latest.step < 500
    assert not root.exists("runs/evicted/result.json")


def test_early_stopping_keeps_best_checkpoint_and_publishes_its_weights(root: Storage, tmp_path: Path) -> None:
    # lr 0.1 overshoots: validation loss is best at the first evaluation, then worse twice.
    config = quick_config("songs", **{"training.learningRate": 0.1, "training.epochs": 6,
                                      "checkpointing.everySteps": 3, "checkpointing.keepLast": 1,
                                      "earlyStopping": {"patience": 2}})
    outcome = Run(config, root, run_id="early", display=False).execute()
    report = outcome.report
    assert report["stoppedEarly"] is True
    assert report["steps"] == 9 and report["maxSteps"] == 60
    assert report["bestStep"] == 3 and report["bestEvalLoss"] < report["finalEvalLoss"]
    checkpoints = root.child("runs", "early", "checkpoints")
    assert checkpoints.list_dirs() == ["checkpoint-3", "checkpoint-9"]  # keepLast=1 plus the best
    best = checkpoints.child("checkpoint-3").download_dir("", tmp_path / "best")
    published = _adapter(root, "early", tmp_path)
    expected = load_file(str(best / "adapter_model.safetensors"))
    for key in expected:
        torch.testing.assert_close(published[key], expected[key])


def test_resume_with_a_changed_configuration_is_refused(root: Storage) -> None:
    config = quick_config("songs", **{"training.maxSteps": 2})
    Run(config, root, run_id="fixed", display=False).execute()
    os.remove(root.local_path() / "runs/fixed/result.json")  # pretend it was interrupted
    changed = quick_config("songs", **{"training.maxSteps": 2, "training.learningRate": 1e-3})
    with pytest.raises(RuntimeError, match=r"different configuration \(changed: training"):
        Run(changed, root, run_id="fixed", resume="latest", display=False).execute()


def test_a_run_killed_after_its_final_checkpoint_only_publishes_on_resume(root: Storage, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # maxSteps ends mid-epoch: before, HF trained step 11 of 10 when resumed from checkpoint-10.
    config = quick_config("songs", **{"training.maxSteps": 10, "training.batchSize": 4,
                                      "checkpointing.everySteps": 5})

    def crash(*_: object, **__: object) -> None:
        raise RuntimeError("killed before publishing")

    with monkeypatch.context() as patch:
        patch.setattr(Run, "_publish", crash)
        with pytest.raises(RuntimeError, match="killed before publishing"):
            Run(config, root, run_id="final", display=False).execute()
    store = CheckpointStore(root.child("runs", "final", "checkpoints"), keep_last=100, background=False)
    final = store.latest()
    assert final is not None and not root.exists("runs/final/result.json")
    logged = _losses(root, "final")

    resumed = Run(config, root, run_id="final", resume="latest", display=False).execute()
    assert resumed.report["steps"] == final.step == resumed.report["maxSteps"]  # no step N+1
    assert _losses(root, "final") == logged  # nothing trained again
    assert resumed.result is not None and resumed.result.adapter_version == 1
    published = _adapter(root, "final", tmp_path)
    local = store.fetch(store.best().name if store.best() else final.name, tmp_path / "ck")  # type: ignore[union-attr]
    expected = load_file(str(local / "adapter_model.safetensors"))
    assert published.keys() == expected.keys()
    for key in published:
        torch.testing.assert_close(published[key], expected[key])


def test_strict_resume_refuses_an_empty_run_and_a_refused_run_writes_nothing(root: Storage) -> None:
    from tunewright.training.run import RunError

    config = quick_config("songs")
    root.write_text("runs/aborted/config.json", json.dumps(config.to_dict(), indent=2, sort_keys=True))
    before = root.sizes()
    with pytest.raises(RunError, match=r"run aborted has no committed checkpoint to resume from; .*--resume auto"):
        Run(config, root, run_id="aborted", resume="latest", display=False).execute()
    missing = quick_config("songs", **{"dataset.id": "nope"})
    with pytest.raises(ValueError, match="dataset 'nope' not found"):
        Run(missing, root, run_id="fresh", display=False).execute()
    assert root.sizes() == before  # no config.json of a run that never started


def test_a_dataset_changed_after_import_is_refused_before_training(root: Storage) -> None:
    config = quick_config("songs")
    samples = root.read_bytes("datasets/songs/samples.jsonl")
    root.write_bytes("datasets/songs/samples.jsonl", samples[: samples.rindex(b"\n", 0, -1) + 1])  # one row less
    with pytest.raises(ValueError, match=r"samples\.jsonl does not match its meta\.json .*changed or damaged"):
        Run(config, root, run_id="cut", display=False).execute()
    assert not root.exists("runs/cut")


def test_a_base_model_that_cannot_load_leaves_no_run_behind(root: Storage) -> None:
    config = quick_config("songs", **{"baseModel": str(root.local_path() / "no-such-model")})
    with pytest.raises(Exception):  # noqa: B017 - whatever from_pretrained raises; storage is what matters
        Run(config, root, run_id="never", display=False).execute()
    assert not root.exists("runs/never")
