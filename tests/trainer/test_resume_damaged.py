"""`--resume latest`/`auto` never silently starts over when the run's checkpoints exist but cannot be loaded;
a run id is only ever continued (or reported complete) under the configuration it was started with."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from support.checkpoints import make_checkpoint_dir
from support.trainer import quick_config
from tunewright.runs import RunStore
from tunewright.storage import Storage
from tunewright.training.checkpoints import CheckpointStore
from tunewright.training.run import Run, RunError


@pytest.mark.parametrize("resume", ["latest", "auto"])
def test_resume_refuses_when_every_checkpoint_is_damaged(root: Storage, tmp_path: Path, resume: str) -> None:
    run_dir = RunStore(root, "damaged").checkpoints
    store = CheckpointStore(run_dir, keep_last=5, background=False)
    for step in (10, 20):
        store.commit(make_checkpoint_dir(tmp_path / "local", step), step, 1.0, None)
    run_dir.delete("checkpoint-10/optimizer.pt")
    run_dir.write_text("checkpoint-20/manifest.json", "{not json")
    before = sorted(root.list("runs"))

    with pytest.raises(RunError) as err:
        Run(quick_config("songs"), root, run_id="damaged", resume=resume, display=False).execute()
    message = str(err.value)
    assert message.startswith("run damaged has checkpoints but none can be resumed from (checkpoint-10: its "
                              "manifest lists 1 object(s) missing from storage: optimizer.pt; checkpoint-20: "
                              "invalid checkpoint manifest: JSONDecodeError")
    assert sorted(root.list("runs")) == before  # nothing written, nothing deleted


def test_resume_says_when_it_falls_back_to_an_older_checkpoint(root: Storage, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    run_dir = RunStore(root, "fallback").checkpoints
    store = CheckpointStore(run_dir, keep_last=5, background=False)
    for step in (10, 20):
        store.commit(make_checkpoint_dir(tmp_path / "local", step), step, 1.0, None)
    run_dir.delete("checkpoint-20/adapter_model.safetensors")
    run = Run(quick_config("songs"), root, run_id="fallback", resume="latest", display=False)
    with caplog.at_level(logging.WARNING, logger="tunewright.training.run"):
        assert run._resume_point().name == "checkpoint-10"
    assert [r.getMessage() for r in caplog.records] == [
        "resuming run fallback from the older checkpoint-10: checkpoint-20: its manifest lists 1 object(s) "
        "missing from storage: adapter_model.safetensors"]


def test_a_complete_run_id_with_another_config_is_refused(root: Storage, tmp_path: Path) -> None:
    import json

    from tunewright.runs import CONFIG, RESULT, RunResult

    run = RunStore(root, "done")
    run.dir.write_text(CONFIG, json.dumps(quick_config("songs").to_dict()))
    result = RunResult(adapter_name="songs-sft", adapter_version=1, adapter_uri="file:///a",
                       report_uri="file:///a/report.json", report_page_uri="file:///a/report.html")
    run.dir.write_text(RESULT, result.to_json())

    same = Run(quick_config("songs"), root, run_id="done", resume="auto", display=False).execute()
    assert same.result == result
    other = quick_config("other", **{"training.learningRate": 0.5})
    with pytest.raises(RunError, match=r"^run done is complete and was trained with a different configuration "
                                       r"\(changed: dataset, training\); use a new run id to train this one$"):
        Run(other, root, run_id="done", resume="auto", display=False).execute()
