"""One writer per run: a lease, `runs/<run-id>/lease.json`, taken and kept with conditional writes.

On S3 the lease is created with `If-None-Match: *`, renewed, taken over, released and withdrawn (put
back, or deleted) with `If-Match: <its ETag>`; on local storage it is created with an exclusive hard link
and otherwise replaced (os.replace) or deleted only after comparing its bytes, under an flock of
`.lease.json.lock` beside it. Either way, of two trainers that write the lease at once exactly one succeeds.

- `acquire()` takes the lease for this process (holder: the pod/host name, the pid, since when). A lease
  that is held is watched: renewed by its holder → refused with RunLeaseHeld, one line naming the holder;
  not renewed for its `timeoutSeconds` (`TUNEWRIGHT_LEASE_SECONDS`, default 60; the holder renews every
  quarter of it), or held by a process of this machine that has exited → taken over, said in one WARNING
  line. So a trainer killed without a word (SIGKILL, OOM, a lost node) holds its run for at most the
  timeout, and a retry (the operator's next attempt, in a new pod) waits for that rather than failing.
- `keep()` renews the lease on a background thread. A transient failure is retried through the run's
  `Outage` (the same tolerance as every other writer); a lease taken over meanwhile (its ETag changed) is
  lost for good: `check()`, called at every training step, then raises LeaseLost.
- `fence()` renews at once and raises LeaseLost if the lease is no longer ours: checkpoint commits and
  publication call it before they make anything visible.
- `release()` marks the lease released (`"released": true`) if it is still ours: the next trainer takes it
  at once, and one fenced off later learns who wrote the run after it.
- `withdraw()` undoes `acquire()` for an attempt refused before its first write of the run: the lease is
  put back as it was (removed if there was none, else the previous bytes), and locally the lock file and
  directories that taking it created are removed, so that a refused run leaves storage as it was.

A write whose response was lost (the store applied it, the client saw a reset and retried) fails its
condition; the lease is then re-read and the write counts as done when the store holds exactly what we
wrote. Expiry compares the holder's clock (as written in the lease) with ours: cluster nodes keep time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunewright.outages import Outage
from tunewright.storage import LocalStorage, S3Storage, Storage, StorageError, _make_parents, _remove_empty

LEASE = "lease.json"
ENV = "TUNEWRIGHT_LEASE_SECONDS"
DEFAULT_TIMEOUT = 60.0
POLL_SECONDS = 2.0  # at most this long between two looks at a lease held by another trainer

log = logging.getLogger(__name__)


class RunLeaseHeld(RuntimeError):
    """Another trainer holds the run's lease and renews it."""


class LeaseLost(RuntimeError):
    """The lease this process held was taken over: it must stop writing the run."""


def timeout_from_env() -> float:
    raw = os.environ.get(ENV)
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV} = {raw!r}: must be a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{ENV} = {raw!r}: must be more than 0")
    return value


def holder_name() -> str:
    """The pod's name in Kubernetes (its HOSTNAME), else the host name."""
    return os.environ.get("HOSTNAME") or socket.gethostname()


def process_space() -> str | None:
    """Where this process's pid means something: the kernel's boot id and the pid namespace (Linux)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def _dead_here(lease: dict[str, Any]) -> bool:
    """The holder ran in this process space (same boot, same pid namespace) and its pid is gone: it died
    without releasing (SIGKILL), and need not be waited for. A reused pid only makes us wait."""
    if lease.get("processSpace") is None or lease.get("processSpace") != process_space():
        return False
    try:
        os.kill(int(lease["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, KeyError, ValueError, TypeError):
        return False
    return False


# -- compare-and-swap of one object --------------------------------------------------------------------


class _Cell(ABC):
    """One key of a store, written only if its tag (S3: the ETag; local: a digest of its bytes) is as
    expected. Every method returns/uses tags; None means "absent"."""

    @abstractmethod
    def read(self) -> tuple[bytes, str] | None: ...

    @abstractmethod
    def write(self, data: bytes, expected: str | None) -> str | None:
        """Write `data` if the current tag is `expected` (None: if absent); its new tag, or None if the
        condition failed."""

    @abstractmethod
    def delete(self, expected: str) -> bool:
        """Remove the key if its tag is `expected`; False if the condition failed."""

    @abstractmethod
    def forget(self) -> None:
        """Remove what taking the key created beside it (after delete() or a write of what was there)."""


class _S3Cell(_Cell):
    """S3's conditional writes. Uses the storage's client and error mapping (StorageError.transient for
    the outage logic), which Storage's interface does not expose: it has no ETags."""

    def __init__(self, storage: S3Storage, key: str):
        self.storage, self.key = storage, key

    def read(self) -> tuple[bytes, str] | None:
        try:
            with self.storage._errors("read", self.key):
                got = self.storage.client.get_object(Bucket=self.storage.bucket, Key=self.storage._key(self.key))
                return got["Body"].read(), got["ETag"]
        except FileNotFoundError:
            return None

    def write(self, data: bytes, expected: str | None) -> str | None:
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        try:
            with self.storage._errors("write", self.key):
                return str(self.storage.client.put_object(Bucket=self.storage.bucket,
                                                          Key=self.storage._key(self.key), Body=data,
                                                          **condition)["ETag"])
        except (FileExistsError, FileNotFoundError):  # 412 (or 409: a concurrent conditional write); 404
            return None

    def delete(self, expected: str) -> bool:
        try:
            with self.storage._errors("delete", self.key):
                self.storage.client.delete_object(Bucket=self.storage.bucket, Key=self.storage._key(self.key),
                                                  IfMatch=expected)
            return True
        except (FileExistsError, FileNotFoundError):  # 412: not ours any more; 404: already gone
            return False

    def forget(self) -> None:
        """Nothing: S3 has no directories, and its conditions need no lock file."""


class _LocalCell(_Cell):
    """A local file: created with an exclusive hard link (LocalStorage.write_bytes), replaced atomically
    (os.replace), compared and swapped under an flock (released by the kernel if the process dies) of a lock
    file beside it. forget() may remove the lock file and its directory: a process that finds the file it
    locked unlinked, or the directory gone, tries again."""

    def __init__(self, storage: LocalStorage, key: str):
        self.storage, self.key = storage, key
        self.path = storage.root / key
        self.lock = self.path.parent / f".{self.path.name}.lock"
        self.created: list[Path] = []  # the directories and the lock file this process created, oldest first

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        while True:
            self.created += _make_parents(self.path.parent)
            if not self.lock.exists():
                self.created.append(self.lock)
            try:
                fh = open(self.lock, "a")  # noqa: SIM115 (closed by the `with` below; opening it may fail alone)
            except FileNotFoundError:  # its directory was removed by forget() meanwhile
                continue
            with fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    current = os.path.samestat(os.fstat(fh.fileno()), os.stat(self.lock))
                except FileNotFoundError:
                    current = False
                if current:  # not unlinked by forget() while we waited for it
                    yield
                    return

    def _tag(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except FileNotFoundError:
            return None

    def read(self) -> tuple[bytes, str] | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def write(self, data: bytes, expected: str | None) -> str | None:
        with self._locked():
            if self._tag() != expected:
                return None
            try:
                self.storage.write_bytes(self.key, data, exclusive=expected is None)
            except FileExistsError:
                return None
        return hashlib.sha256(data).hexdigest()

    def delete(self, expected: str) -> bool:
        with self._locked():
            if self._tag() != expected:
                return False
            self.path.unlink()
        return True

    def forget(self) -> None:
        with self._locked():
            if self.lock in self.created:
                self.lock.unlink()  # under its lock: a process waiting for it sees it unlinked and tries again
        _remove_empty([p for p in self.created if p != self.lock])
        self.created = []


def _cell(storage: Storage, key: str) -> _Cell:
    if isinstance(storage, S3Storage):
        return _S3Cell(storage, key)
    if isinstance(storage, LocalStorage):
        return _LocalCell(storage, key)
    raise StorageError(f"no run lease for {type(storage).__name__} ({storage.uri})")


# -- the lease -------------------------------------------------------------------------------------------


def _describe(lease: dict[str, Any]) -> str:
    return f"{lease.get('holder', '?')} (pid {lease.get('pid', '?')}, since {lease.get('since', '?')})"


class RunLease:
    """The lease of one run directory, for this process."""

    def __init__(self, run_dir: Storage, run_id: str, outage: Outage | None = None, timeout: float | None = None,
                 clock: Callable[[], float] = time.time):
        self.run_id = run_id
        self.uri = f"{run_dir.uri}/{LEASE}"
        self.cell = _cell(run_dir, LEASE)
        self.outage = outage or Outage(run_dir.uri)
        self.timeout = timeout_from_env() if timeout is None else timeout
        self.clock = clock
        self.mine = {"holder": holder_name(), "pid": os.getpid(), "processSpace": process_space(),
                     "token": uuid.uuid4().hex,
                     "since": datetime.now(UTC).isoformat(timespec="seconds"), "timeoutSeconds": self.timeout}
        self._tag: str | None = None
        self._before: bytes | None = None  # the lease as acquire() found it (None: there was none)
        self._written = float("-inf")  # time.monotonic() of our last successful write of the lease
        self._lock = threading.Lock()  # one conditional write at a time: each needs the tag of the last
        self._lost: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking it ---------------------------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the lease: at once if there is none, or it was released or has expired; after watching it
        while its holder is silent; never while the holder renews it (RunLeaseHeld)."""
        seen: tuple[bytes, str] | None = None
        while True:
            current = self._call(self.cell.read, "reading")
            if current is None:
                if self._write(None):
                    self._before = None
                    return
                continue  # another trainer created it first: look at theirs
            data, tag = current
            self._before = data
            lease = self._parse(data)
            age = self.clock() - float(lease.get("renewed", 0))
            holder_timeout = float(lease.get("timeoutSeconds", self.timeout))
            if lease.get("released") is True:
                if self._write(tag):
                    return
                continue
            if age > holder_timeout or _dead_here(lease):
                if self._write(tag):
                    why = (f"not renewed for {age:.0f} s (timeout {holder_timeout:.0f} s)" if age > holder_timeout
                           else "whose process has exited on this machine")
                    log.warning("run %s: taking over the lease of %s, %s", self.run_id, _describe(lease), why)
                    return
                continue
            if seen is not None and seen[1] != tag and self._parse(seen[0]).get("token") == lease.get("token"):
                raise RunLeaseHeld(
                    f"run {self.run_id} is being written by {_describe(lease)}, which renews its lease "
                    f"{self.uri}; one trainer per run: wait for it to end, or stop it (its lease may be taken "
                    f"over {holder_timeout:.0f} s after its last renewal, {ENV})")
            seen = current
            time.sleep(min(max(holder_timeout - age, 0.0) + 0.05, holder_timeout / 8, POLL_SECONDS))

    def _parse(self, data: bytes) -> dict[str, Any]:
        try:
            lease = json.loads(data)
            assert isinstance(lease, dict)
            return lease
        except (ValueError, AssertionError):
            return {"holder": f"an unreadable {LEASE}", "renewed": 0}  # taken over like an expired one

    def _write(self, expected: str | None, released: bool = False) -> bool:
        """A conditional write of our lease; a condition that fails because our own write went through
        (its response was lost and the client retried) counts as success."""
        body = json.dumps({**self.mine, "renewed": self.clock(), "released": released}, sort_keys=True).encode()
        new = self._call(lambda: self.cell.write(body, expected), "writing")
        if new is None:
            current = self._call(self.cell.read, "reading")
            if current is None or current[0] != body:
                return False
            new = current[1]
        self._tag, self._written = new, time.monotonic()
        return True

    def _call(self, action: Callable[[], Any], what: str) -> Any:
        return self.outage.call(action, f"{what} the lease {LEASE}")

    # -- keeping it --------------------------------------------------------------------------------------

    def fence(self) -> None:
        """Renew now; LeaseLost if another trainer has taken the lease over."""
        with self._lock:
            if self._lost is not None:
                raise LeaseLost(str(self._lost))
            if self._tag is None or not self._write(self._tag):
                current = self.cell.read()
                by = _describe(self._parse(current[0])) if current else "nobody (it was deleted)"
                self._lost = LeaseLost(f"run {self.run_id}: this trainer's lease {self.uri} was taken over by {by}; "
                                       "it stops writing the run")
                raise self._lost

    def confirm(self) -> None:
        """fence() without a request while the lease was written less than half its timeout ago: no other
        trainer may take it over before a whole timeout passes without a renewal. Before each background
        write of progress.json / metrics.jsonl (outages.LatestWriter)."""
        if self._lost is None and time.monotonic() - self._written < self.timeout / 2:
            return
        self.fence()

    def check(self) -> None:
        """Raise what stopped the renewals (LeaseLost, or the store unreachable beyond its tolerance)."""
        if self._lost is not None:
            raise self._lost

    def keep(self) -> None:
        """Renew every quarter of the timeout on a background thread until release()."""
        self._thread = threading.Thread(target=self._renew, name="run-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.timeout / 4):
            try:
                self.fence()
            except (LeaseLost, StorageError, OSError) as err:  # OSError: a local store's own failures
                self._lost = self._lost or err
                log.error("%s", err)
                return

    def release(self) -> None:
        """Stop renewing; mark the lease released if it is still ours (kept, not deleted: a trainer fenced
        off later is told who wrote the run after it). Nothing to do if it was never acquired."""
        self._stop_renewing()
        with self._lock:
            if self._tag is not None and self._lost is None:
                with contextlib.suppress(StorageError):
                    self._write(self._tag, released=True)
            self._tag = None

    def withdraw(self) -> None:
        """Stop renewing and put the lease back as acquire() found it, if it is still ours: for an attempt
        that ends before its first write of the run (a refused run leaves storage as it was). Best effort,
        like release(): an error while the attempt is already failing must not hide why it failed."""
        self._stop_renewing()
        with self._lock:
            tag, self._tag = self._tag, None
            if tag is None or self._lost is not None:
                return
            before = self._before
            with contextlib.suppress(StorageError, OSError):
                if self._call(lambda: self.cell.delete(tag) if before is None else self.cell.write(before, tag),
                              "withdrawing"):
                    self.cell.forget()

    def _stop_renewing(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
