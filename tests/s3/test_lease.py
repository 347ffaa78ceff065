"""The run lease (tunewright.lease) on local storage and on S3 (moto, If-None-Match / If-Match): a held lease
refuses a second trainer naming its holder, a silent one is taken over after its timeout and its old holder
is fenced off, of two racing trainers exactly one gets it, and a write whose response was lost still counts."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tunewright.lease import LEASE, LeaseLost, RunLease, RunLeaseHeld, holder_name, process_space
from tunewright.storage import Storage, open_storage

TIMEOUT = 1.0


@pytest.fixture(params=["file", "s3"])
def run_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "file":
        return open_storage(f"file://{tmp_path}/root/runs/r1")
    return open_storage(request.getfixturevalue("s3_root")).child("runs", "r1")


def _token(run_dir: Storage) -> str:
    return str(json.loads(run_dir.read_bytes(LEASE))["token"])


def test_a_renewed_lease_refuses_a_second_trainer_naming_its_holder(run_dir: Storage) -> None:
    first = RunLease(run_dir, "r1", timeout=TIMEOUT)
    first.acquire()
    first.keep()
    try:
        began = time.monotonic()
        with pytest.raises(RunLeaseHeld) as refused:
            RunLease(run_dir, "r1", timeout=TIMEOUT).acquire()
        assert time.monotonic() - began < TIMEOUT  # refused once the holder renewed, before any timeout
        line = str(refused.value)
        assert "\n" not in line
        assert re.match(rf"run r1 is being written by {re.escape(holder_name())} \(pid {os.getpid()}, since "
                        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00\)", line), line
        assert _token(run_dir) == first.mine["token"]  # the holder's lease is untouched
        first.check()
    finally:
        first.release()
    assert json.loads(run_dir.read_bytes(LEASE))["released"] is True
    began = time.monotonic()
    RunLease(run_dir, "r1", timeout=TIMEOUT).acquire()  # a released run is taken at once
    assert time.monotonic() - began < TIMEOUT / 2


def test_a_silent_lease_is_taken_over_after_its_timeout_and_its_holder_is_fenced_off(
        run_dir: Storage, caplog: pytest.LogCaptureFixture) -> None:
    killed = RunLease(run_dir, "r1", timeout=TIMEOUT)
    killed.acquire()  # and never renewed: a SIGKILLed trainer
    began = time.monotonic()
    second = RunLease(run_dir, "r1", timeout=TIMEOUT)
    with caplog.at_level(logging.WARNING, logger="tunewright.lease"):
        second.acquire()
    assert TIMEOUT * 0.9 <= time.monotonic() - began < TIMEOUT * 3
    assert [r.getMessage() for r in caplog.records] == [caplog.records[0].getMessage()]
    assert re.fullmatch(rf"run r1: taking over the lease of {re.escape(holder_name())} \(pid \d+, since .*\), "
                        r"not renewed for 1 s \(timeout 1 s\)", caplog.records[0].getMessage())
    with pytest.raises(LeaseLost, match=r"^run r1: this trainer's lease .*lease.json was taken over by .*; it stops "
                                        r"writing the run$"):
        killed.fence()  # what a checkpoint commit or the publication of the old holder would do
    with pytest.raises(LeaseLost):
        killed.check()
    killed.release()  # not ours any more: left alone
    assert _token(run_dir) == second.mine["token"]
    second.fence()
    second.release()
    assert json.loads(run_dir.read_bytes(LEASE)) | {"renewed": 0} == {**second.mine, "renewed": 0, "released": True}


def test_a_lost_renewal_stops_the_renewals_and_check_raises(run_dir: Storage) -> None:
    holder = RunLease(run_dir, "r1", timeout=0.4)
    holder.acquire()
    holder.keep()
    run_dir.write_text(LEASE, '{"holder": "someone-else", "pid": 7, "renewed": 1e12, "token": "x"}')
    time.sleep(0.4)  # at least one renewal
    with pytest.raises(LeaseLost, match=r"taken over by someone-else \(pid 7, since \?\)"):
        holder.check()
    holder.release()
    assert run_dir.read_text(LEASE).startswith('{"holder": "someone-else"')  # release() left it alone


def test_of_two_trainers_racing_for_a_free_run_exactly_one_writes_it(run_dir: Storage) -> None:
    leases = [RunLease(run_dir, "r1", timeout=TIMEOUT) for _ in range(2)]
    barrier = threading.Barrier(2)
    outcomes: list[object] = [None, None]

    def take(i: int) -> None:
        barrier.wait()
        try:
            leases[i].acquire()
            leases[i].keep()
            outcomes[i] = "holder"
        except RunLeaseHeld as err:
            outcomes[i] = err

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(map(type, outcomes), key=str) == sorted([str, RunLeaseHeld], key=str), outcomes
    winner = outcomes.index("holder")
    assert _token(run_dir) == leases[winner].mine["token"]
    leases[winner].release()


def test_a_renewal_whose_response_was_lost_counts_as_renewed(run_dir: Storage,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    lease = RunLease(run_dir, "r1", timeout=TIMEOUT)
    lease.acquire()
    write = lease.cell.write

    def applied_but_unanswered(data: bytes, expected: str | None) -> str | None:
        write(data, expected)  # the store applied it; the client retried and its condition then failed
        return None

    with monkeypatch.context() as patched:
        patched.setattr(lease.cell, "write", applied_but_unanswered)
        lease.fence()
    lease.fence()  # and the tag it re-read is the current one
    lease.release()
    assert json.loads(run_dir.read_bytes(LEASE))["released"] is True


def test_a_lease_whose_process_exited_on_this_machine_is_taken_over_at_once(
        run_dir: Storage, caplog: pytest.LogCaptureFixture) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead = {"holder": holder_name(), "pid": int(gone.stdout), "processSpace": process_space(), "token": "t",
            "since": "2026-11-28T10:00:00+00:00", "renewed": time.time(), "timeoutSeconds": 3600}
    run_dir.write_text(LEASE, json.dumps(dead))
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tunewright.lease"):
        RunLease(run_dir, "r1", timeout=TIMEOUT).acquire()
    assert time.monotonic() - began < TIMEOUT
    assert caplog.records[-1].getMessage().endswith(f"(pid {dead['pid']}, since 2026-11-28T10:00:00+00:00), "
                                                    "whose process has exited on this machine")
    dead["pid"] = os.getpid()  # alive: its lease is waited for (and here, being fresh and renewed, refused)
    run_dir.write_text(LEASE, json.dumps(dead))
    with pytest.raises(RunLeaseHeld):
        waiting = RunLease(run_dir, "r1", timeout=TIMEOUT)
        threading.Timer(0.3, lambda: run_dir.write_text(LEASE, json.dumps({**dead, "renewed": time.time()}))).start()
        waiting.acquire()


def _stored(run_dir: Storage) -> dict[str, bytes]:
    """Every object under the run directory; locally also the hidden lock file and the directory itself."""
    local = run_dir.local_path()
    if local is None:
        return {key: run_dir.read_bytes(key) for key in run_dir.list()}
    return {p.relative_to(local.parent).as_posix(): p.read_bytes() if p.is_file() else b"<dir>"
            for p in [local, *local.rglob("*")] if p.exists()}


def test_a_withdrawn_lease_leaves_the_run_directory_as_it_was(run_dir: Storage) -> None:
    """What a run refused after taking its lease does (training.run: a different configuration, a bad
    field found once the model is loaded): no lease, lock file or directory left where there was none, the
    previous holder's released lease byte for byte where there was one."""
    assert _stored(run_dir) == {}
    lease = RunLease(run_dir, "r1", timeout=TIMEOUT)
    lease.acquire()
    lease.keep()
    assert run_dir.exists(LEASE)
    lease.withdraw()
    assert _stored(run_dir) == {}

    previous = RunLease(run_dir, "r1", timeout=TIMEOUT)
    previous.acquire()
    previous.release()
    before = _stored(run_dir)
    lease = RunLease(run_dir, "r1", timeout=TIMEOUT)
    lease.acquire()
    assert _token(run_dir) == lease.mine["token"]
    lease.withdraw()
    assert _stored(run_dir) == before
    lease.release()  # after withdraw(): nothing left to release
    assert _stored(run_dir) == before


def test_a_lease_taken_over_meanwhile_is_not_withdrawn(run_dir: Storage) -> None:
    lease = RunLease(run_dir, "r1", timeout=TIMEOUT)
    lease.acquire()
    run_dir.write_text(LEASE, '{"holder": "someone-else", "pid": 7, "renewed": 1e12, "token": "x"}')
    lease.withdraw()
    assert run_dir.read_text(LEASE).startswith('{"holder": "someone-else"')
