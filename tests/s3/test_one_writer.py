"""One writer per run, with real trainers on S3 (moto behind the fault proxy): a second trainer of a run
that is being written is refused naming the holder; a trainer cut off from the store loses the run to one
that takes its silent lease over, and when the store comes back it is fenced off: it registers nothing,
and the one adapter registered for the run is the run's own."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.s3 import FaultProxy
from support.trainer import import_rows, quick_config
from tunewright.data import synthetic
from tunewright.lease import RunLease, RunLeaseHeld, holder_name
from tunewright.registry import Registry
from tunewright.storage import open_storage
from tunewright.training.checkpoints import CheckpointStore

LEASE_SECONDS = "5"  # renewed every 1.25 s: ample on a loaded machine


def _trainer(config_path: Path, root_uri: str, endpoint: str) -> subprocess.Popen:
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "TUNEWRIGHT_LEASE_SECONDS": LEASE_SECONDS,
           "AWS_MAX_ATTEMPTS": "2"}  # an outage is ridden out by the trainer's own retries; 2 keeps it short
    return subprocess.Popen(
        [sys.executable, "-m", "tunewright.cli.train", "--config", str(config_path), "--storage", root_uri,
         "--run-id", "shared", "--resume", "auto", "--quiet", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_a_second_trainer_is_refused_and_a_cut_off_one_is_taken_over_and_fenced(
        s3_root: str, s3_faults: FaultProxy, moto_endpoint: str, tmp_path: Path) -> None:
    root = open_storage(s3_root)
    import_rows(root, "songs", synthetic.rated_rows(), "rated", tmp_path)
    config = quick_config("songs", **{"training.epochs": 6, "training.batchSize": 4,
                                      "checkpointing.everySteps": 20, "checkpointing.keepLast": 2})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    first = _trainer(path, root.uri, s3_faults.endpoint)  # its requests go through the fault proxy
    checkpoints = CheckpointStore(root.child("runs", "shared", "checkpoints"), keep_last=2, background=False)
    deadline = time.monotonic() + 300
    while checkpoints.latest() is None:
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)

    # A second trainer (the CLI's one line is checked under torchrun in tests/distributed): refused at once.
    with pytest.raises(RunLeaseHeld, match=rf"^run shared is being written by {re.escape(holder_name())} \(pid "
                                           rf"{first.pid}, since [-0-9T:+]+\), which renews its lease "
                                           r".*/runs/shared/lease\.json; one trainer per run: "):
        RunLease(root.child("runs", "shared"), "shared", timeout=float(LEASE_SECONDS)).acquire()

    s3_faults.fail_always("reset")  # the first trainer is cut off from the store (it trains on, retrying)
    third = _trainer(path, root.uri, moto_endpoint)
    out, err = third.communicate(timeout=300)
    assert third.returncode == 0, err[-3000:]
    takeover = [ln for ln in err.splitlines() if "taking over the lease" in ln]
    assert len(takeover) == 1, err[-3000:]
    assert re.search(rf"of {re.escape(holder_name())} \(pid {first.pid}, since .*\), not renewed for \d+ s "
                     rf"\(timeout {LEASE_SECONDS} s\)$", takeover[0]), takeover[0]
    assert first.poll() is None  # still riding out its outage

    s3_faults.heal()
    first_out, first_err = first.communicate(timeout=300)
    assert first.returncode == 1 and first_out == "", first_err[-3000:]
    assert re.fullmatch(rf"error: run shared: this trainer's lease .*/runs/shared/lease\.json was taken over by "
                        rf"{re.escape(holder_name())} \(pid {third.pid}, since .*\); it stops writing the run",
                        first_err.splitlines()[-1]), first_err[-3000:]

    records = [r for r in Registry(root).list() if r.run_id == "shared"]
    assert len(records) == 1 and out.strip() == records[0].uri
    result = json.loads(root.child("runs", "shared").read_text("result.json"))
    assert result["adapterUri"] == records[0].uri
    run_adapter = root.child("runs", "shared", "adapter").read_bytes("adapter_model.safetensors")
    assert open_storage(records[0].uri).read_bytes("adapter_model.safetensors") == run_adapter
    lease = json.loads(root.child("runs", "shared").read_text("lease.json"))
    assert (lease["pid"], lease["released"]) == (third.pid, True)  # released by the trainer that finished
    progress = json.loads(root.child("runs", "shared").read_text("progress.json"))
    assert progress["state"] == "completed"  # the cut-off trainer wrote nothing over the third's run
