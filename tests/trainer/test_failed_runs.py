"""A run that ends other than by success (an exception, bad input found mid-run, Ctrl-C) leaves progress.json
saying `failed` and why, in the words of the CLI's error line, instead of `running` forever."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import TrainerCallback

from support.trainer import quick_config
from tunewright.runs import RunStore
from tunewright.storage import Storage
from tunewright.training import run as run_module
from tunewright.training.run import Run

FAST = {"training.maxSteps": 4, "training.epochs": 1}


def _progress(root: Storage, run_id: str) -> Any:
    progress = RunStore(root, run_id).read_progress()
    assert progress is not None
    return progress


def test_an_error_after_training_marks_the_run_failed_and_a_retry_publishes(root: Storage,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("listen failed:\n  the codec is gone")

    monkeypatch.setattr(run_module, "listen", broken)
    config = quick_config("songs", **FAST)
    with pytest.raises(RuntimeError):
        Run(config, root, run_id="r1", display=False).execute()
    progress = _progress(root, "r1")
    assert (progress.state, progress.message, progress.step) == ("failed", "listen failed: the codec is gone", 4)
    assert progress.last_checkpoint == "checkpoint-4"
    assert not root.exists("runs/r1/result.json")

    monkeypatch.undo()
    Run(config, root, run_id="r1", resume="auto", display=False).execute()
    progress = _progress(root, "r1")
    assert (progress.state, progress.message) == ("completed", None)


def test_an_error_before_the_first_step_marks_a_started_run_failed(root: Storage,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("cannot build the trainer")

    monkeypatch.setattr(run_module, "describe_batch", broken)  # after config.json, before progress exists
    with pytest.raises(ValueError):
        Run(quick_config("songs", **FAST), root, run_id="r2", display=False).execute()
    progress = _progress(root, "r2")
    assert (progress.state, progress.message) == ("failed", "cannot build the trainer")


def test_a_refused_setting_found_after_the_model_loads_stores_nothing(root: Storage,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_module.torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="fp16 needs a GPU"):
        Run(quick_config("songs", **{**FAST, "training.precision": "fp16"}), root, run_id="r5",
            display=False).execute()
    assert not root.exists("runs/r5")


class _CtrlC(TrainerCallback):
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 2:
            raise KeyboardInterrupt


def test_ctrl_c_mid_training_marks_the_run_failed(root: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    original = run_module.ObjectiveTrainer.__init__

    def with_ctrl_c(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.add_callback(_CtrlC())

    monkeypatch.setattr(run_module.ObjectiveTrainer, "__init__", with_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        Run(quick_config("songs", **FAST), root, run_id="r3", display=False).execute()
    progress = _progress(root, "r3")
    assert (progress.state, progress.message, progress.step) == ("failed", "interrupted (SIGINT)", 1)


def test_a_refused_start_writes_no_progress(root: Storage) -> None:
    with pytest.raises(ValueError):
        Run(quick_config("nope", **FAST), root, run_id="r4", display=False).execute()
    assert not root.exists("runs/r4")
