"""`--resume latest`/`auto` never silently starts over when the run's checkpoints exist but cannot be loaded;
a run id is only ever continued (or reported complete) under the configuration it was started with; a run
being written by another trainer is refused for that (its lease) before anything of it is read, and a run
refused after taking the lease leaves storage as it was."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
from pathlib import Path

import pytest

from support.checkpoints import make_checkpoint_dir
from support.trainer import quick_config
from tunewright.cli.common import run_cli
from tunewright.lease import LEASE, RunLease, RunLeaseHeld, _LocalCell, holder_name
from tunewright.runs import CONFIG, RunStore
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


def _tree(where: Path) -> dict[str, str]:
    """Every path under `where` (hidden ones and directories too), files with their sha256."""
    return {p.relative_to(where).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(where.rglob("*"))}


def test_a_run_being_written_is_refused_for_its_lease_before_its_checkpoints_are_read(
        root: Storage, tmp_path: Path) -> None:
    """Its only checkpoint is damaged (as one that the holder's retention is deleting would look), which a
    read before the lease would refuse for instead of naming the holder."""
    store = CheckpointStore(RunStore(root, "held").checkpoints, keep_last=5, background=False)
    store.commit(make_checkpoint_dir(tmp_path / "local", 10), 10, 1.0, None)
    store.storage.delete("checkpoint-10/adapter_model.safetensors")
    holder = RunLease(root.child("runs", "held"), "held", timeout=1.0)
    holder.acquire()
    holder.keep()
    try:
        before = {k: v for k, v in _tree(root.local_path()).items() if not k.endswith(f"/{LEASE}")}
        with pytest.raises(RunLeaseHeld) as refused:
            Run(quick_config("songs"), root, run_id="held", resume="auto", display=False).execute()
        assert re.match(rf"run held is being written by {re.escape(holder_name())} \(pid {os.getpid()}, since "
                        rf"{re.escape(holder.mine['since'])}\), which renews its lease ", str(refused.value))
        assert {k: v for k, v in _tree(root.local_path()).items() if not k.endswith(f"/{LEASE}")} == before
        assert json.loads(root.read_text(f"runs/held/{LEASE}"))["token"] == holder.mine["token"]
        holder.check()
    finally:
        holder.release()


@pytest.mark.parametrize("lease", ["none", "released"])
def test_a_run_refused_after_taking_its_lease_leaves_storage_as_it_was(root: Storage, tmp_path: Path,
                                                                       lease: str) -> None:
    """Resumed with another configuration: refused once the lease is taken (the stored config.json is read
    under it). The lease is put back: none where there was none, the last trainer's released one byte for
    byte where there was one."""
    run = _started_run(root, tmp_path)
    if lease == "released":
        last = RunLease(run.dir, "changed")
        last.acquire()
        last.release()
    before = _tree(root.local_path())
    with pytest.raises(RunError, match=f"^{re.escape(CHANGED)}$"):
        Run(quick_config("songs", **{"training.learningRate": 1e-3}), root, run_id="changed", resume="auto",
            display=False).execute()
    assert _tree(root.local_path()) == before


def test_a_sigterm_while_a_refused_run_puts_its_lease_back_does_not_cut_that_short(
        root: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Under torchrun the other ranks, refused alike, may exit first: torchrun then stops rank 0 with SIGTERM
    while it is putting the lease back."""
    _started_run(root, tmp_path)
    before = _tree(root.local_path())
    delete = _LocalCell.delete

    def signalled(cell: _LocalCell, expected: str) -> bool:
        os.kill(os.getpid(), signal.SIGTERM)
        return delete(cell, expected)

    monkeypatch.setattr(_LocalCell, "delete", signalled)
    def resume_changed() -> int:
        Run(quick_config("songs", **{"training.learningRate": 1e-3}), root, run_id="changed", resume="auto",
            display=False).execute()
        return 0

    assert (run_cli(resume_changed), capsys.readouterr().err) == (1, f"error: {CHANGED}\n")
    assert _tree(root.local_path()) == before


CHANGED = ("run changed was started with a different configuration (changed: training); start a new run instead "
           "of resuming")


def _started_run(root: Storage, tmp_path: Path) -> RunStore:
    """Run `changed`: started with quick_config("songs"), one checkpoint committed, no lease."""
    run = RunStore(root, "changed")
    run.dir.write_text(CONFIG, json.dumps(quick_config("songs").to_dict()))
    CheckpointStore(run.checkpoints, keep_last=5, background=False).commit(
        make_checkpoint_dir(tmp_path / "local", 10), 10, 1.0, None)
    return run
