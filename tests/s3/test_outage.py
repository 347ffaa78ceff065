"""A storage outage mid-run: training goes on, metrics/progress and checkpoints are retried until the store
is back, and the result is that of an uninterrupted run; an outage beyond the tolerance fails with one line."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from support.s3 import FaultProxy
from support.trainer import import_rows, quick_config
from tunewright.data import synthetic
from tunewright.outages import LatestWriter, Outage, StorageOutageError
from tunewright.registry import Registry
from tunewright.storage import StorageError, open_storage
from tunewright.training import run as run_module
from tunewright.training.checkpoints import CheckpointStore
from tunewright.training.run import Run

OUTAGE_SECONDS = 15  # the issue asks for 60 s; 15 s is 5x what used to kill a run, and keeps the suite short


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_outage_warns_once_when_the_store_goes_and_once_when_it_is_back(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    outage = Outage("s3://b/p", tolerance=60, clock=clock, sleep=clock.sleep)
    failures = iter(range(6))

    def flaky() -> str:
        if next(failures, None) is not None:
            raise StorageError("connection refused (injected)", transient=True)
        return "stored"

    with caplog.at_level(logging.WARNING, logger="tunewright.outages"):
        assert outage.call(flaky, "writing progress.json") == "stored"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "s3://b/p unreachable" in messages[0] and "connection refused" in messages[0]
    assert messages[1] == f"storage s3://b/p is back after {clock.now:.1f} s unreachable"
    assert 10 < clock.now < 30 and outage.seconds() == 0 and outage.outages == 1

    with pytest.raises(StorageError, match="denied"):  # not an outage: raised at once, not retried
        outage.call(lambda: (_ for _ in ()).throw(StorageError("access denied")), "x")

    def down() -> None:
        raise StorageError("connection refused (injected)", transient=True)

    with pytest.raises(StorageOutageError, match=r"^storage s3://b/p unreachable for 60 s, longer than the 60 s "
                                                 r"tolerated \(TUNEWRIGHT_STORAGE_OUTAGE_SECONDS\); last error, "
                                                 r"writing metrics.jsonl: connection refused \(injected\)$"):
        outage.call(down, "writing metrics.jsonl")


def test_writer_keeps_the_latest_content_and_fails_beyond_the_tolerance(s3_root: str, s3_faults: FaultProxy,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    root = open_storage(s3_root)
    writer = LatestWriter(root, Outage(root.uri, tolerance=30, initial_delay=0.05, max_delay=0.5))
    s3_faults.fail_always("reset")
    for n in range(50):
        writer.put("metrics.jsonl", f"line {n}\n")  # never blocks while the store is away
    time.sleep(2)
    s3_faults.heal()
    writer.drain()
    assert root.read_text("metrics.jsonl") == "line 49\n"

    gone = LatestWriter(root, Outage(root.uri, tolerance=1, initial_delay=0.05, max_delay=0.2))
    s3_faults.fail_always("reset")
    gone.put("progress.json", "{}")
    with pytest.raises(StorageOutageError, match=r"unreachable for [0-9]+ s, longer than the 1 s tolerated"):
        gone.drain()


def test_run_survives_a_storage_outage_and_equals_an_uninterrupted_run(s3_root: str, s3_faults: FaultProxy,
                                                                       tmp_path: Path) -> None:
    root = open_storage(s3_root)
    import_rows(root, "songs", synthetic.rated_rows(), "rated", tmp_path)
    config = quick_config("songs", **{"training.epochs": 6, "training.batchSize": 4,
                                      "checkpointing.everySteps": 10, "checkpointing.keepLast": 2})
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunewright.cli.train", "--config", str(tmp_path / "config.json"), "--storage",
         root.uri, "--run-id", "blip", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = CheckpointStore(root.child("runs", "blip", "checkpoints"), keep_last=2, background=False)
    deadline = time.monotonic() + 300
    while store.latest() is None:  # mid-run: once the first checkpoint is committed
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    s3_faults.fail_always("reset")  # every request to the store: connection dropped
    time.sleep(OUTAGE_SECONDS)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    s3_faults.heal()
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert len(s3_faults.injected("reset")) >= 3
    warnings = [line for line in err.splitlines() if line.startswith("WARNING tunewright.outages")]
    assert len(warnings) == 2, err[-3000:]
    assert "unreachable" in warnings[0] and " is back after " in warnings[1]
    assert float(warnings[1].split(" is back after ")[1].split(" s")[0]) >= OUTAGE_SECONDS - 5

    Run(config, root, run_id="steady", display=False).execute()
    runs = root.child("runs")

    def losses(run_id: str) -> dict[int, float]:
        lines = [json.loads(x) for x in runs.child(run_id).read_text("metrics.jsonl").splitlines()]
        return {r["step"]: r["loss"] for r in lines if "loss" in r}

    assert losses("blip") == losses("steady") and len(losses("blip")) > 10
    assert json.loads(runs.child("blip").read_text("progress.json"))["state"] == "completed"
    weights = {}
    for run_id in ("blip", "steady"):
        local = runs.child(run_id, "adapter").download_dir("", tmp_path / run_id)
        weights[run_id] = load_file(str(local / "adapter_model.safetensors"))
    assert weights["blip"].keys() == weights["steady"].keys()
    assert all(bool((weights["blip"][k] == weights["steady"][k]).all()) for k in weights["blip"])


PUBLISH_OUTAGE_SECONDS = 6


def test_publication_rides_out_an_outage_and_registers_once(s3_root: str, s3_faults: FaultProxy, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """The store drops every connection for some seconds as publication starts (adapter upload, registry,
    result.json); then the registered weights' PUT is stored but its answer lost, and its retries are dropped
    again, so the write that finally gets through is refused as existing: it is ours. One version, complete."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # botocore gives up within a second; the outage retry goes on
    root = open_storage(s3_root)
    import_rows(root, "songs", synthetic.rated_rows(), "rated", tmp_path)
    publish = Run._publish

    def in_an_outage(self: Run, *args: object) -> object:
        s3_faults.fail_next("lost", "reset", "reset", "reset", method="PUT",
                            path="/adapters/songs-sft/1/adapter_model.safetensors")
        s3_faults.fail_for(PUBLISH_OUTAGE_SECONDS, "reset")
        return publish(self, *args)

    monkeypatch.setattr(run_module.Run, "_publish", in_an_outage)
    config = quick_config("songs", **{"training.maxSteps": 4, "training.epochs": 1})
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tunewright.outages"):
        outcome = Run(config, root, run_id="pub", display=False).execute()
    assert outcome.result is not None and outcome.result.adapter_version == 1
    assert time.monotonic() - began >= PUBLISH_OUTAGE_SECONDS
    assert len(s3_faults.injected("reset")) >= 4 and len(s3_faults.injected("lost")) == 1
    assert [m for m in caplog.messages if "is back after" in m], caplog.messages

    registry = Registry(root)
    assert [(r.version, r.run_id) for r in registry.list()] == [(1, "pub")]
    assert registry.adapters.list_dirs("songs-sft") == ["1"]  # no half-registered version left behind
    run_dir = root.child("runs", "pub")
    assert json.loads(run_dir.read_text("result.json"))["adapterUri"] == registry.version_dir("songs-sft", 1).uri
    version = registry.version_dir("songs-sft", 1)
    for name in ("adapter_model.safetensors", "adapter_config.json", "report.json"):
        assert version.read_bytes(name) == run_dir.read_bytes(f"adapter/{name}")
    assert json.loads(run_dir.read_text("progress.json"))["state"] == "completed"
