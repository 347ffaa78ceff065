"""Data parallelism on CPU (gloo): `tunewright-train --nproc-per-node 2` under torchrun, in subprocesses.

Which single-process run is equivalent to 2 processes × per-device batch B? HF Trainer shuffles once with
the data seed and accelerate deals consecutive batches of B to the ranks (rank r takes batches r, r+2, ...),
so one optimizer step sees the same 2B samples as one process taking two micro-batches of B with gradient
accumulation 2. DDP averages the ranks' gradients and HF divides each micro-batch's loss by the
accumulation steps: both are the mean of the two micro-batch means, and the logged loss is averaged the
same way. So 2 × B is exactly 1 × B × accumulation 2 (same losses, gradient norms, eval losses, weights),
including the epoch end. 1 × 2B without accumulation is NOT exactly the same: it sees the same samples,
but the objectives average over the tokens of a whole micro-batch, which weights the samples differently.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from support.checkpoints import make_checkpoint_dir
from support.trainer import import_rows, quick_config
from tunewright.config import TrainingConfig
from tunewright.data import synthetic
from tunewright.lease import LEASE, RunLease, holder_name
from tunewright.registry import Registry
from tunewright.storage import Storage, open_storage
from tunewright.training import reference
from tunewright.training.checkpoints import CheckpointStore
from tunewright.training.distributed import WorldSizeChanged
from tunewright.training.run import Run

pytestmark = pytest.mark.slow

# 80 training examples: 10 steps of 2 × 4 per epoch, checkpoints mid-epoch and at epoch ends.
PARALLEL = {"training.batchSize": 4, "training.epochs": 2, "checkpointing.everySteps": 3}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Storage:
    tmp = tmp_path_factory.mktemp("dp")
    root = open_storage(f"file://{tmp}/store")
    import_rows(root, "songs", synthetic.rated_rows(), "rated", tmp)
    return root


def _start(root: Storage, config: TrainingConfig, tmp: Path, *args: str) -> subprocess.Popen:
    path = tmp / f"config-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(config.to_dict()))
    cmd = [sys.executable, "-m", "tunewright.cli.train", "--nproc-per-node", "2", "--config", str(path),
           "--storage", root.uri, "--metrics-port", "0", "--quiet", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"trainer exited early: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _metrics(root: Storage, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in root.child("runs", run_id).read_text("metrics.jsonl").splitlines()]


def _by_step(records: list[dict[str, Any]], key: str) -> dict[int, float]:
    values = [(r["step"], r[key]) for r in records if key in r]
    assert len({s for s, _ in values}) == len(values), f"a step logged {key} twice"
    return dict(values)


def _assert_same(a: dict[int, float], b: dict[int, float], what: str, tol: float = 1e-5) -> None:
    assert sorted(a) == sorted(b), what
    for step in a:
        assert abs(a[step] - b[step]) <= tol * max(1.0, abs(a[step])), f"{what} at step {step}: {a[step]} vs {b[step]}"


def _adapter(root: Storage, run_id: str, tmp: Path) -> dict[str, torch.Tensor]:
    local = root.child("runs", run_id, "adapter").download_dir("", tmp / f"adapter-{run_id}")
    return load_file(str(local / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def two_processes(store: Storage, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """An uninterrupted 2-process run (no --run-id: the launcher picks one for both workers): (run id, stdout)."""
    code, out, err = _finish(_start(store, quick_config("songs", **PARALLEL), tmp_path_factory.mktemp("two")))
    assert code == 0, err[-3000:]
    runs = [r for r in store.child("runs").list_dirs() if r.startswith("songs-sft-")]
    assert len(runs) == 1, runs
    return runs[0], out


def test_two_processes_train_exactly_like_one_with_accumulation(
        store: Storage, two_processes: tuple[str, str], tmp_path: Path) -> None:
    two_id, out = two_processes
    one = Run(quick_config("songs", **PARALLEL, **{"training.gradientAccumulationSteps": 2}), store,
              run_id="one-process", display=False).execute()
    assert out.splitlines() == [f"{store.uri}/adapters/songs-sft/1"]  # rank 0 alone prints and publishes
    assert [r.version for r in Registry(store).list() if r.run_id == two_id] == [1]

    two = json.loads(store.child("runs", two_id).read_text("report.json"))
    assert (two["worldSize"], two["globalBatchSize"]) == (2, 8)
    assert (one.report["worldSize"], one.report["globalBatchSize"]) == (1, 8)
    assert two["steps"] == one.report["steps"] == 20
    assert two["initialEvalLoss"] == pytest.approx(one.report["initialEvalLoss"], rel=1e-6)  # whole split
    a, b = _metrics(store, two_id), _metrics(store, "one-process")
    for key in ("loss", "grad_norm", "learning_rate", "eval_loss"):
        _assert_same(_by_step(a, key), _by_step(b, key), key)
    assert len(_by_step(a, "loss")) == 20 and len(_by_step(a, "eval_loss")) >= 7
    wa, wb = _adapter(store, two_id, tmp_path), _adapter(store, "one-process", tmp_path)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-5, rtol=1e-4)

    progress = json.loads(store.child("runs", two_id).read_text("progress.json"))
    assert progress["state"] == "completed" and progress["step"] == 20
    latest = CheckpointStore(store.child("runs", two_id, "checkpoints"), keep_last=3).latest()
    assert latest is not None and latest.step == 20
    # Rank 0's commit carries every rank's RNG state (HF saved rank 1's in rank 1's own directory).
    files = {f["path"] for f in latest.files}
    assert {"rng_state_0.pth", "rng_state_1.pth", "distributed.json", "optimizer.pt"} <= files
    assert "rng_state.pth" not in files


def test_sigterm_stops_both_ranks_at_one_checkpoint_and_resume_continues_exactly(
        store: Storage, two_processes: tuple[str, str], tmp_path: Path) -> None:
    config = quick_config("songs", **PARALLEL)
    proc = _start(store, config, tmp_path, "--run-id", "evicted", "--resume", "auto")
    progress = store.child("runs", "evicted")
    _wait_for(lambda: progress.exists("progress.json")
              and json.loads(progress.read_text("progress.json"))["step"] >= 4, proc)
    proc.send_signal(signal.SIGTERM)  # to the launcher only, as the kubelet does: torchrun forwards it
    code, out, err = _finish(proc)
    assert code == 143, err[-3000:]
    assert out == ""
    stopped = json.loads(progress.read_text("progress.json"))
    assert stopped["state"] == "interrupted"
    assert f"error: stopped by SIGTERM at step {stopped['step']}; checkpoint committed" in err
    checkpoints = CheckpointStore(store.child("runs", "evicted", "checkpoints"), keep_last=3)
    at = checkpoints.latest()
    assert at is not None and at.step == stopped["step"] < 20
    assert stopped["lastCheckpoint"] == at.name

    # One process cannot continue what two started: refused before anything is written.
    before = sorted(store.child("runs", "evicted").sizes().items())
    with pytest.raises(WorldSizeChanged, match=rf"{at.name} was trained by 2 process\(es\) and this run has 1: "
                                               r"the global batch would change from 8 to 4"):
        Run(config, store, run_id="evicted", resume="latest", display=False).execute()
    assert sorted(store.child("runs", "evicted").sizes().items()) == before

    code, out, err = _finish(_start(store, config, tmp_path, "--run-id", "evicted", "--resume", "auto"))
    assert code == 0, err[-3000:]
    report = json.loads(progress.read_text("report.json"))
    assert report["resumedFrom"] == at.name and report["steps"] == 20
    a, b = _metrics(store, two_processes[0]), _metrics(store, "evicted")
    assert sorted(_by_step(b, "loss")) == list(range(1, 21))  # every step once: none repeated, none lost
    for key in ("loss", "grad_norm", "eval_loss"):
        _assert_same(_by_step(a, key), _by_step(b, key), key, tol=1e-4)
    wa, wb = _adapter(store, two_processes[0], tmp_path), _adapter(store, "evicted", tmp_path)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-5, rtol=1e-4)


def _reference_scores(root: Storage, run_id: str) -> dict[str, Any]:
    latest = CheckpointStore(root.child("runs", run_id, "checkpoints"), keep_last=1, background=False).latest()
    assert latest is not None
    data = root.child("runs", run_id, "checkpoints", latest.name).read_bytes(reference.FILE)
    return torch.load(io.BytesIO(data), weights_only=True)


def test_two_processes_share_the_lazy_dpo_reference(store: Storage, tmp_path: Path) -> None:
    import_rows(store, "prefs", synthetic.preference_rows(), "preference", tmp_path)
    config = quick_config("prefs", method="dpo", **{"training.maxSteps": 2})
    code, _, err = _finish(_start(store, config, tmp_path, "--run-id", "dpo-two"))
    assert code == 0, err[-3000:]
    shares = sorted(re.findall(r"reference: process (\d) of 2 scored (\d+) of (\d+) samples", err))
    assert [s[0] for s in shares] == ["0", "1"], err[-3000:]
    two = _reference_scores(store, "dpo-two")
    # Each process scored only its own micro-batches (and its share of the validation split), and the
    # checkpoint process 0 wrote holds what both scored.
    assert all(0 < int(s[1]) < int(s[2]) for s in shares), shares
    assert int(two["known"].sum()) == sum(int(s[1]) for s in shares)

    Run(config, store, run_id="dpo-one", metrics_port=None, display=False).execute()
    one = _reference_scores(store, "dpo-one")
    assert two["key"] == one["key"]
    both = two["known"] & one["known"]
    assert both.sum() > 0
    torch.testing.assert_close(two["logps"][both], one["logps"][both], atol=0, rtol=1e-5)


def _worker_pid(launcher: int, rank: int) -> int:
    """The pid of the torchrun worker of `rank` started by the launcher process `launcher`."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in env:
            return int(proc.name)
    raise AssertionError(f"no worker of rank {rank} under process {launcher}")


def test_a_rank_killed_by_sigkill_is_the_one_reported_not_its_peer(store: Storage, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    termination_log = tmp_path / "termination-log"
    monkeypatch.setenv("TUNEWRIGHT_TERMINATION_LOG", str(termination_log))
    proc = _start(store, quick_config("songs", **PARALLEL), tmp_path, "--run-id", "rank-killed")
    progress = store.child("runs", "rank-killed")
    _wait_for(lambda: progress.exists("progress.json")
              and json.loads(progress.read_text("progress.json"))["step"] >= 2, proc)
    os.kill(_worker_pid(proc.pid, 1), signal.SIGKILL)
    code, out, err = _finish(proc)
    last = err.rstrip().splitlines()[-1]  # the launcher's line, after what the workers printed
    assert last == "error: rank 1 of 2: killed by SIGKILL", err[-3000:]
    assert code == 137 and out == ""
    assert termination_log.read_text() == "rank 1 of 2: killed by SIGKILL"
    assert not progress.exists("result.json")


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_workers_die_with_a_sigkilled_launcher_and_publish_nothing(store: Storage, tmp_path: Path) -> None:
    proc = _start(store, quick_config("songs", **PARALLEL), tmp_path, "--run-id", "orphans")
    progress = store.child("runs", "orphans")
    _wait_for(lambda: progress.exists("progress.json")
              and json.loads(progress.read_text("progress.json"))["step"] >= 2, proc)
    workers = [_worker_pid(proc.pid, r) for r in (0, 1)]
    proc.kill()
    _finish(proc)
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in workers):
        assert time.monotonic() < deadline, "the workers outlived their launcher"
        time.sleep(0.05)
    time.sleep(1)
    assert not progress.exists("result.json")
    assert [r for r in Registry(store).list() if r.run_id == "orphans"] == []


def test_a_second_trainer_of_a_run_being_written_is_refused_naming_rank_0_of_the_first(
        store: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunewright.lease import holder_name

    monkeypatch.setenv("TUNEWRIGHT_LEASE_SECONDS", "2")
    # Still training, and committing and deleting checkpoints, when the second asks: none of its ranks reads
    # them before rank 0's lease decision (deterministically: the test after this one).
    config = quick_config("songs", **{**PARALLEL, "training.epochs": 50})
    first = _start(store, config, tmp_path, "--run-id", "leased", "--resume", "auto")
    progress = store.child("runs", "leased")
    _wait_for(lambda: progress.exists("progress.json")
              and json.loads(progress.read_text("progress.json"))["step"] >= 2, first)
    writer = _worker_pid(first.pid, 0)
    code, out, err = _finish(_start(store, config, tmp_path, "--run-id", "leased", "--resume", "auto"))
    assert code == 1 and out == "", err[-3000:]
    assert re.fullmatch(rf"error: rank 0 of 2: run leased is being written by {re.escape(holder_name())} \(pid "
                        rf"{writer}, since [-0-9T:+]+\), which renews its lease .*", err.rstrip().splitlines()[-1])
    assert first.poll() is None
    first.send_signal(signal.SIGTERM)
    assert _finish(first)[0] == 143
    assert json.loads(progress.read_text("lease.json"))["released"] is True


def test_a_second_trainer_is_refused_for_the_lease_before_any_rank_reads_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race of issue 22, made deterministic: the run's only checkpoint is damaged (as one that the
    holder's retention is deleting looks to a reader) and its lease is held by a live holder (this test
    process, renewing). Every rank waits for rank 0's lease decision before reading the run, so every
    process says the lease, the launcher names rank 0, and nothing stored changes but the holder's own
    renewals."""
    root = open_storage(f"file://{tmp_path}/store")
    import_rows(root, "songs", synthetic.rated_rows(), "rated", tmp_path)
    store = CheckpointStore(root.child("runs", "held", "checkpoints"), keep_last=2, background=False)
    store.commit(make_checkpoint_dir(tmp_path / "local", 9), 9, 1.0, None)
    store.storage.delete("checkpoint-9/adapter_model.safetensors")
    holder = RunLease(root.child("runs", "held"), "held", timeout=2.0)
    holder.acquire()
    holder.keep()
    termination_log = tmp_path / "termination-log"
    monkeypatch.setenv("TUNEWRIGHT_TERMINATION_LOG", str(termination_log))

    def stored() -> dict[str, bytes | None]:  # the lease itself is renewed meanwhile
        local = root.local_path()
        return {p.relative_to(local).as_posix(): p.read_bytes() if p.is_file() else None
                for p in sorted(local.rglob("*")) if p.name != LEASE}

    try:
        before = stored()
        code, out, err = _finish(_start(root, quick_config("songs", **PARALLEL), tmp_path, "--run-id", "held",
                                        "--resume", "auto"))
        refusal = (rf"run held is being written by {re.escape(holder_name())} \(pid {os.getpid()}, since "
                   rf"{re.escape(holder.mine['since'])}\), which renews its lease .*/runs/held/lease\.json; one "
                   r"trainer per run: .*")
        assert code == 1 and out == "", err[-3000:]
        errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 3, err[-3000:]  # each worker's own line, then the launcher's
        assert all(re.fullmatch(rf"error: (rank 0 of 2: )?{refusal}", ln) for ln in errors), err[-3000:]
        assert errors[-1].startswith("error: rank 0 of 2: "), errors
        assert re.fullmatch(rf"rank 0 of 2: {refusal}", termination_log.read_text())
        assert stored() == before
        assert json.loads(root.child("runs", "held").read_text(LEASE))["token"] == holder.mine["token"]
        holder.check()
    finally:
        holder.release()
