"""S3 faults between the trainer and the server, injected by a proxy in front of moto: transient errors
are retried and succeed; persistent ones fail the commit loudly; a crash mid-upload never produces a
checkpoint that resume would pick."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from support.checkpoints import digests, make_checkpoint_dir
from support.s3 import FaultProxy
from tunewright.storage import open_storage
from tunewright.training.checkpoints import CheckpointError, CheckpointStore


def test_transient_faults_are_retried_and_checkpoints_commit(s3_root: str, s3_faults: FaultProxy,
                                                             tmp_path: Path) -> None:
    storage = open_storage(s3_root).child("runs", "r", "checkpoints")
    store = CheckpointStore(storage, keep_last=1, retry_delay=0.05)
    # A quarter of all requests fail at random, and the first uploads get one fault of each kind.
    s3_faults.fail_fraction(0.25, ("500", "503", "reset"), seed=7)
    s3_faults.fail_next("slowdown", "500", "reset", "503", method="PUT")  # SlowDown first: it backs off 1 s × 2^n
    expected = {}
    for step, metric in [(10, 0.9), (20, 0.5), (30, 0.7)]:
        expected[step] = digests(make_checkpoint_dir(tmp_path / "local", step))
        store.commit(tmp_path / "local" / f"checkpoint-{step}", step, step / 10, metric)
    store.flush()

    assert {kind for _, _, kind in s3_faults.injected()} == {"500", "503", "slowdown", "reset"}
    assert len(s3_faults.injected()) >= 8
    assert [i.name for i in store.committed()] == ["checkpoint-20", "checkpoint-30"]
    s3_faults.fail_next("truncate", "truncate", method="GET")  # responses cut mid-body while fetching
    for step in (20, 30):
        assert digests(store.fetch(f"checkpoint-{step}", tmp_path / f"fetched-{step}")) == expected[step]
    assert len(s3_faults.injected("truncate")) == 2


def test_truncated_reads_are_retried(s3_root: str, s3_faults: FaultProxy, tmp_path: Path) -> None:
    root = open_storage(s3_root)
    body = os.urandom(300_000)
    root.write_bytes("progress.json", body)
    s3_faults.fail_next("truncate", "reset", method="GET")
    assert root.read_bytes("progress.json") == body
    s3_faults.fail_next("truncate", method="GET")
    root.download_file("progress.json", tmp_path / "p.json")
    assert (tmp_path / "p.json").read_bytes() == body
    assert [k for *_, k in s3_faults.injected()] == ["truncate", "reset", "truncate"]


def test_persistent_faults_fail_loudly_and_keep_committed_checkpoints(
        s3_root: str, s3_faults: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")  # botocore's own retries; keeps the test short
    monkeypatch.setenv("TUNEWRIGHT_STORAGE_OUTAGE_SECONDS", "2")  # 5xx are retried for this long
    storage = open_storage(s3_root).child("runs", "r", "checkpoints")
    store = CheckpointStore(storage, keep_last=1, retry_delay=0.05)
    for step, metric in [(10, 0.5), (20, 0.9)]:
        store.commit(make_checkpoint_dir(tmp_path / "local", step), step, 1.0, metric)
    store.flush()
    good = {step: digests(tmp_path / "local" / f"checkpoint-{step}") for step in (10, 20)}

    # Every data file of checkpoint-30 uploads, its manifest never does: as good as a crash before commit.
    s3_faults.fail_always("500", method="PUT", path="/checkpoint-30/manifest.json")
    store.commit(make_checkpoint_dir(tmp_path / "local", 30), 30, 1.0, 0.1)
    with pytest.raises(CheckpointError, match=r"checkpoint-30 could not be committed to s3://.*manifest\.json: "
                                              r"storage s3://\S+ unreachable for [0-9]+ s, longer than the 2 s "
                                              r"tolerated \(TUNEWRIGHT_STORAGE_OUTAGE_SECONDS\).*InternalError"):
        store.flush()
    assert len(s3_faults.injected("500")) >= 6  # retried past botocore's 3 attempts, for 2 s

    fresh = CheckpointStore(open_storage(s3_root).child("runs", "r", "checkpoints"), keep_last=1)
    assert [i.name for i in fresh.committed()] == ["checkpoint-10", "checkpoint-20"]
    assert fresh.resolve("latest").name == "checkpoint-20"
    assert "checkpoint-30" in storage.list_dirs()  # its data files are there, uncommitted
    for step in (10, 20):
        assert digests(fresh.fetch(f"checkpoint-{step}", tmp_path / f"f{step}")) == good[step]

    s3_faults.heal()
    fresh.commit(make_checkpoint_dir(tmp_path / "local", 40), 40, 2.0, 0.7)
    fresh.flush()
    assert storage.list_dirs() == ["checkpoint-10", "checkpoint-40"]  # incomplete 30 cleaned up


CRASHING_UPLOADER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from tunewright.storage import open_storage
    from tunewright.training.checkpoints import CheckpointStore

    store = CheckpointStore(open_storage(sys.argv[1]), keep_last=3)
    store.commit(Path(sys.argv[2]), step=20, epoch=2.0, metric=0.1)
    store.flush()
""")


def test_killed_mid_upload_leaves_latest_at_the_previous_checkpoint(s3_root: str, s3_faults: FaultProxy,
                                                                    tmp_path: Path) -> None:
    storage = open_storage(s3_root).child("checkpoints")
    CheckpointStore(storage, keep_last=3, background=False).commit(
        make_checkpoint_dir(tmp_path / "local", 10), 10, 1.0, 0.5)
    local20 = make_checkpoint_dir(tmp_path / "local", 20)
    s3_faults.fail_next("ok", "stall", method="PUT", path="/checkpoint-20/")  # hold the second file's upload

    # The uploader runs in its own process (environment from s3_env/s3_faults) and is SIGKILLed mid-upload.
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_UPLOADER, storage.uri, str(local20)])
    try:
        assert s3_faults.stalled.wait(30), "the upload never reached the stalled request"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    store = CheckpointStore(storage, keep_last=3, background=False)
    assert [i.name for i in store.committed()] == ["checkpoint-10"]
    assert store.resolve("latest").name == "checkpoint-10"
    assert storage.list("checkpoint-20"), "nothing of checkpoint-20 was uploaded: the crash came too early"
    with pytest.raises(CheckpointError, match=r"'checkpoint-20' .* is incomplete"):
        store.resolve("checkpoint-20")

    s3_faults.heal()  # the held request now completes, as a late write from the dead process would
    store.commit(make_checkpoint_dir(tmp_path / "again", 30), 30, 3.0, 0.3)
    assert [i.name for i in store.committed()] == ["checkpoint-10", "checkpoint-30"]


def test_a_checkpoints_files_upload_concurrently_on_a_slow_store(s3_root: str, s3_faults: FaultProxy,
                                                                  tmp_path: Path) -> None:
    storage = open_storage(s3_root).child("checkpoints")
    store = CheckpointStore(storage, keep_last=3)
    sizes = {f"shard-{n}.bin": 1000 for n in range(12)}
    local = make_checkpoint_dir(tmp_path / "local", 10, sizes=sizes)
    s3_faults.latency = 0.5  # every request: 13 files x (PUT + HEAD) one after another would take >= 13 s
    started = time.monotonic()
    store.commit(local, 10, 1.0, None)
    store.flush()
    assert time.monotonic() - started < 8
    s3_faults.latency = 0.0
    assert digests(store.fetch("checkpoint-10", tmp_path / "fetched")) == digests(local)


def test_flush_with_a_timeout_says_when_a_commit_is_still_uploading(s3_root: str, s3_faults: FaultProxy,
                                                                    tmp_path: Path) -> None:
    store = CheckpointStore(open_storage(s3_root).child("checkpoints"), keep_last=3)
    s3_faults.fail_next("stall", method="PUT")
    store.commit(make_checkpoint_dir(tmp_path / "local", 10), 10, 1.0, None)
    assert s3_faults.stalled.wait(30)
    assert store.flush(timeout=0.5) is False
    s3_faults.heal()
    assert store.flush(timeout=60) is True
    assert store.latest().name == "checkpoint-10"


def test_sigterm_says_when_the_checkpoint_cannot_commit_within_the_grace_period(
        s3_root: str, s3_faults: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from support.trainer import quick_config
    from tunewright.training.run import Run, RunError

    run = Run(quick_config("songs"), open_storage(s3_root), run_id="evicted", display=False)
    run.lease.acquire()  # as the run does before its first write: commits are fenced by it
    s3_faults.fail_next("stall", method="PUT", path="/checkpoint-7/")
    run.checkpoints.commit(make_checkpoint_dir(tmp_path / "local", 7), 7, 1.0, None)
    assert s3_faults.stalled.wait(30)
    monkeypatch.setenv("TUNEWRIGHT_TERMINATION_GRACE_SECONDS", "11")  # 10 s of it are kept for the exit
    started = time.monotonic()
    with pytest.raises(RunError, match=r"^stopped by SIGTERM at step 7, but its checkpoint could not be committed "
                                       r"within the 11 s grace period \(still uploading 1 s after SIGTERM\); the "
                                       r"next attempt resumes from the last committed checkpoint$"):
        run._commit_within_grace(started, 7)
    assert time.monotonic() - started < 3
    assert run._grace_spent  # so the failing run does not wait for the upload either (Run.execute)
    run._finish_commits(0.0)
    assert time.monotonic() - started < 4
    s3_faults.heal()
    run._commit_within_grace(time.monotonic(), 7)  # committed in time: nothing to say
    assert run.checkpoints.latest().name == "checkpoint-7"
