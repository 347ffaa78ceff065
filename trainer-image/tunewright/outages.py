"""Riding out storage outages: a run keeps training while its store is briefly unreachable.

An `Outage` is shared by every writer of one process (the checkpoint uploader, the metrics/progress writer).
`Outage.call(action)` runs a storage action; a transient failure (StorageError.transient: connection
refused/reset, timeouts, 5xx and throttling once botocore's own retries are spent) is retried with
exponential backoff until the action succeeds or the store has been unreachable for longer than the
tolerance (`TUNEWRIGHT_STORAGE_OUTAGE_SECONDS`, default 900), which raises StorageOutageError with one line
naming the store, the duration and the last error. Other errors (access denied, a missing bucket or key,
corruption) are raised at once. The first failure of an outage logs one WARNING, the first success after it
one WARNING with the outage's duration; `seconds()` is the current outage's age (0 while the store answers),
exported as a Prometheus gauge by the trainer.

`LatestWriter` writes files that are rewritten whole (metrics.jsonl, progress.json) on a background thread:
`put()` never blocks the training loop, a newer `put()` of the same key replaces the pending one, and
`drain()` waits until everything is stored. Given a `fence` (the run lease's `confirm`), every attempt of a
write first proves the run is still this trainer's: a trainer cut off from the store while another took the
run over never writes its buffered files over the new writer's once the store is back. (botocore retries
for seconds, not minutes, and has no notion of "latest wins"; hence these by hand.)

`RetryingStorage` is a Storage whose every request goes through an Outage (publication uses it: adapter
upload, registry, result.json). An exclusive write refused as existing after an earlier attempt of the same
write failed transiently is ours when the stored bytes are the ones sent (that attempt was stored, its answer
lost), so a retried publication never mistakes its own files for a concurrent writer's.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tunewright.storage import Storage, StorageError

ENV = "TUNEWRIGHT_STORAGE_OUTAGE_SECONDS"
DEFAULT_TOLERANCE = 900.0

T = TypeVar("T")
log = logging.getLogger(__name__)


class StorageOutageError(StorageError):
    """The store stayed unreachable for longer than the tolerance."""


def tolerance_from_env() -> float:
    raw = os.environ.get(ENV)
    if not raw:
        return DEFAULT_TOLERANCE
    try:
        value = float(raw)
    except ValueError:
        raise StorageError(f"{ENV} = {raw!r}: must be a number of seconds") from None
    if value < 0:
        raise StorageError(f"{ENV} = {raw!r}: must be at least 0")
    return value


class Outage:
    """The reachability of one store, as seen by every writer of this process."""

    def __init__(self, uri: str, tolerance: float | None = None, initial_delay: float = 0.5,
                 max_delay: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.uri = uri
        self.tolerance = tolerance_from_env() if tolerance is None else tolerance
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.clock = clock
        self.sleep = sleep
        self.outages = 0  # outages seen so far
        self._since: float | None = None
        self._lock = threading.Lock()

    def seconds(self) -> float:
        """How long the store has been unreachable; 0 while it answers."""
        since = self._since
        return 0.0 if since is None else max(self.clock() - since, 0.0)

    def call(self, action: Callable[[], T], what: str) -> T:
        delay = self.initial_delay
        while True:
            try:
                result = action()
            except StorageError as err:
                if not err.transient:
                    raise
                self._failed(err, what)
                self.sleep(min(delay, max(self.tolerance - self.seconds(), 0.0)) or 0.0)
                delay = min(delay * 2, self.max_delay)
                continue
            self._answered()
            return result

    def _failed(self, err: StorageError, what: str) -> None:
        with self._lock:
            now = self.clock()
            if self._since is None:
                self._since = now
                self.outages += 1
                log.warning("storage %s unreachable (%s: %s); training goes on and writes are retried for up "
                            "to %.0f s (%s)", self.uri, what, err, self.tolerance, ENV)
            elapsed = now - self._since
        if elapsed >= self.tolerance:
            raise StorageOutageError(f"storage {self.uri} unreachable for {elapsed:.0f} s, longer than the "
                                     f"{self.tolerance:.0f} s tolerated ({ENV}); last error, {what}: {err}")

    def _answered(self) -> None:
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            log.warning("storage %s is back after %.1f s unreachable", self.uri, self.clock() - since)


class LatestWriter:
    """Whole-file writes to `storage` on a background thread, the latest content of each key winning."""

    def __init__(self, storage: Storage, outage: Outage, fence: Callable[[], None] | None = None):
        self.storage = storage
        self.outage = outage
        self.fence = fence or (lambda: None)
        self._pending: dict[str, bytes] = {}
        self._busy = False
        self._failure: Exception | None = None
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def put(self, key: str, data: bytes | str) -> None:
        """Queue `data` as the new content of `key`; raises if an earlier write failed for good."""
        self.check()
        with self._changed:
            self._pending[key] = data.encode("utf-8") if isinstance(data, str) else data
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="run-files-writer", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued write is stored (False: `timeout` seconds passed first); raise the failure
        if one failed for good."""
        with self._changed:
            done = self._changed.wait_for(lambda: self._failure is not None or not (self._pending or self._busy),
                                          timeout)
        self.check()
        return done

    def check(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _work(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._pending))
                key, data = next(iter(self._pending.items()))
                del self._pending[key]
                self._busy = True
            try:
                self.outage.call(lambda k=key, d=data: (self.fence(), self.storage.write_bytes(k, d)),
                                 f"writing {key}")
            except Exception as err:  # StorageError, or LeaseLost from the fence
                with self._changed:
                    self._failure = err
                    self._busy = False
                    self._changed.notify_all()
                log.error("%s", err)
                return
            with self._changed:
                self._busy = False
                self._changed.notify_all()


class RetryingStorage(Storage):
    """`inner` with every request retried through `outage` while the store is unreachable."""

    def __init__(self, inner: Storage, outage: Outage):
        self.inner = inner
        self.outage = outage
        self.uri = inner.uri

    def child(self, *parts: str) -> Storage:
        return RetryingStorage(self.inner.child(*parts), self.outage)

    def local_path(self) -> Path | None:
        return self.inner.local_path()

    def read_bytes(self, key: str) -> bytes:
        return self.outage.call(lambda: self.inner.read_bytes(key), f"reading {key}")

    def exists(self, key: str) -> bool:
        return self.outage.call(lambda: self.inner.exists(key), f"checking {key}")

    def list(self, prefix: str = "") -> list[str]:
        return self.outage.call(lambda: self.inner.list(prefix), f"listing {prefix or '/'}")

    def sizes(self, prefix: str = "") -> dict[str, int]:
        return self.outage.call(lambda: self.inner.sizes(prefix), f"listing {prefix or '/'}")

    def size(self, key: str) -> int:
        return self.outage.call(lambda: self.inner.size(key), f"checking {key}")

    def delete(self, prefix: str) -> None:
        self.outage.call(lambda: self.inner.delete(prefix), f"deleting {prefix}")

    def download_file(self, key: str, local: str | Path) -> None:
        self.outage.call(lambda: self.inner.download_file(key, local), f"downloading {key}")

    def write_bytes(self, key: str, data: bytes, exclusive: bool = False) -> None:
        self._write(lambda: self.inner.write_bytes(key, data, exclusive), key, lambda: data, f"writing {key}")

    def upload_file(self, local: str | Path, key: str, exclusive: bool = False) -> None:
        self._write(lambda: self.inner.upload_file(local, key, exclusive), key, Path(local).read_bytes,
                    f"uploading {key}")

    def _write(self, action: Callable[[], None], key: str, sent: Callable[[], bytes], what: str) -> None:
        failed = False

        def attempt() -> None:
            nonlocal failed
            try:
                action()
            except StorageError as err:
                failed = failed or err.transient
                raise
            except FileExistsError:
                if not (failed and self.inner.read_bytes(key) == sent()):
                    raise
                log.info("%s/%s: stored by an attempt whose answer was lost", self.uri, key)

        self.outage.call(attempt, what)
