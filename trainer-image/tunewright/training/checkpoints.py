"""Durable checkpoints in storage (file:// or s3://), committed by a manifest written last.

    <root>/checkpoint-<step>/...             the files of the trainer's local checkpoint directory
    <root>/checkpoint-<step>/manifest.json   CheckpointInfo: step, epoch, metric, every file's size+sha256

A checkpoint exists only once its manifest does, and only while every file the manifest lists is present
with the listed size. A `checkpoint-<step>` directory without a manifest (a crash mid-upload, a
half-finished deletion) is incomplete: ignored, and later removed by retention. One with a manifest that
cannot be used (unreadable, or listing an object that is missing or has another size) is damaged: never
resumed from, reported with its reason (`damaged()`), and never deleted by retention, so whatever of it is
intact can still be recovered by hand. Retention deletes the manifest first, so a deletion cut short never
leaves something that looks committed.

HF Trainer's own rotation (`save_total_limit`) is not used for this: it knows nothing of uploads and has
deleted the best checkpoint in the past (transformers #15089, #25129, #39476).

This module only moves files: no torch here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunewright.outages import Outage, StorageOutageError
from tunewright.runs import now_iso
from tunewright.storage import Storage, StorageError, clean_key

MANIFEST = "manifest.json"
_NAME = re.compile(r"checkpoint-([0-9]+)")  # matched with fullmatch

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    pass


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


@dataclass
class CheckpointInfo:
    """The manifest of a committed checkpoint (`manifest.json`)."""

    name: str
    step: int
    epoch: float
    metric: float | None  # validation metric (eval_loss) at this step, if evaluated; lower is better
    created: str
    files: list[dict[str, Any]] = field(default_factory=list)  # [{"path", "size", "sha256"}]

    @property
    def size(self) -> int:
        return sum(int(f["size"]) for f in self.files)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, data: str | bytes) -> CheckpointInfo:
        """Parse a manifest; ValueError says what is wrong with it."""
        try:
            raw = json.loads(data)
            info = cls(name=str(raw["name"]), step=int(raw["step"]), epoch=float(raw["epoch"]),
                       metric=None if raw.get("metric") is None else float(raw["metric"]),
                       created=str(raw["created"]),
                       files=[_file_entry(f["path"], f["size"], f["sha256"]) for f in raw["files"]])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, StorageError) as err:
            raise ValueError(f"invalid checkpoint manifest: {type(err).__name__}: {err}") from None
        if not info.files:
            raise ValueError("invalid checkpoint manifest: it lists no files")
        return info


OnCommit = Callable[[CheckpointInfo, float], None]


def _file_entry(path: str, size: Any, sha256: Any) -> dict[str, Any]:
    return {"path": clean_key(path), "size": int(size), "sha256": str(sha256)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(2**20):
            digest.update(block)
    return digest.hexdigest()


def _checkpoint_files(local_dir: Path) -> list[Path]:
    # Hidden files are temp files by convention (LocalStorage hides them too); HF writes none.
    return sorted(p for p in local_dir.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(local_dir).parts) and p.name != MANIFEST)


def _snapshot(local_dir: Path) -> Path:
    """Hard-link the checkpoint's files into a private directory, so that a background upload survives the
    trainer deleting or rotating its local directory meanwhile (copies where links are impossible)."""
    snap = Path(tempfile.mkdtemp(prefix=f".{local_dir.name}.upload-", dir=local_dir.parent))
    for src in _checkpoint_files(local_dir):
        dst = snap / src.relative_to(local_dir)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    return snap


@dataclass
class _Job:
    snapshot: Path
    step: int
    epoch: float
    metric: float | None


class CheckpointStore:
    """Commit, list, retain and fetch the checkpoints of one run.

    Commits run one at a time, in order, on a background thread (unless `background=False`), so training
    continues while a checkpoint uploads; a checkpoint's files upload concurrently (`upload_workers`).
    Each file is uploaded and verified (Storage.upload_file checks size and, on S3, the ETag; then the
    whole listing is checked), and only then is the manifest written.
    While the store is unreachable (a transient StorageError) every request is retried through `outage`
    (shared with the run's other writers; see tunewright.outages) until it answers or the outage outlasts
    its tolerance; any other failure is retried `attempts` times with exponential backoff from
    `retry_delay` seconds. A checkpoint that still fails is recorded: `flush()` (and the next `commit()`)
    raises CheckpointError naming it and the cause; committed checkpoints are never touched by a failure.

    `on_commit` callbacks get (info, upload_seconds) on the upload thread, after the manifest and before
    retention; an exception in one is logged, not raised.

    `fence` (the run lease's: see tunewright.lease) is called before a commit deletes or commits anything;
    when it raises (another trainer has taken the run over), the checkpoint fails and nothing is written.
    """

    def __init__(self, storage: Storage, keep_last: int, background: bool = True,
                 on_commit: OnCommit | Iterable[OnCommit] | None = None, attempts: int = 3,
                 retry_delay: float = 2.0, outage: Outage | None = None, upload_workers: int = 8,
                 fence: Callable[[], None] | None = None):
        if keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}")
        self.storage = storage
        self.keep_last = keep_last
        self.background = background
        self.on_commit: list[OnCommit] = (
            [] if on_commit is None else [on_commit] if callable(on_commit) else list(on_commit))
        self.attempts = attempts
        self.retry_delay = retry_delay
        self.outage = outage or Outage(storage.uri)
        self.upload_workers = upload_workers
        self.fence = fence or (lambda: None)
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._failures: list[CheckpointError] = []
        self._lock = threading.Lock()

    # -- writing -----------------------------------------------------------------------------------------

    def commit(self, local_dir: Path, step: int, epoch: float, metric: float | None) -> None:
        """Upload every file of `local_dir` as `checkpoint-<step>`, write its manifest last, then apply
        retention. In the background by default: returns once the files are snapshotted (hard links), so
        the caller may delete `local_dir` right away, but must not rewrite its files in place (a link shares
        the bytes). Raises at once if an earlier commit failed."""
        self.check()
        local_dir = Path(local_dir)
        if not local_dir.is_dir() or not _checkpoint_files(local_dir):
            raise CheckpointError(f"cannot commit checkpoint-{step}: {local_dir} holds no files")
        job = _Job(_snapshot(local_dir), step, epoch, metric)
        if not self.background:
            self._run(job)
            self.check()
            return
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="checkpoint-upload", daemon=True)
                self._worker.start()
        self._queue.put(job)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for every pending commit (at most `timeout` seconds: False if some are still uploading then);
        raise CheckpointError if any failed."""
        done = True
        if self._worker is not None:
            with self._queue.all_tasks_done:  # Queue.join() with a timeout
                done = self._queue.all_tasks_done.wait_for(lambda: not self._queue.unfinished_tasks, timeout)
        self.check()
        return done

    def check(self) -> None:
        """Raise CheckpointError if a commit has failed (without waiting for pending ones)."""
        with self._lock:
            failures = list(self._failures)
        if len(failures) == 1:
            raise failures[0]
        if failures:
            raise CheckpointError("; ".join(str(f) for f in failures)) from failures[0]

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                self._run(job)
            finally:
                self._queue.task_done()

    def _run(self, job: _Job) -> None:
        name = checkpoint_name(job.step)
        try:
            info, seconds = self._upload(job, name)
        except Exception as err:
            failure = CheckpointError(f"{name} could not be committed to {self.storage.uri}: {err}")
            failure.__cause__ = err
            log.error("%s", failure)
            with self._lock:
                self._failures.append(failure)
            return
        finally:
            shutil.rmtree(job.snapshot, ignore_errors=True)
        log.info("committed %s (%d files, %.1f MB) to %s in %.1f s", name, len(info.files), info.size / 1e6,
                 self.storage.uri, seconds)
        for callback in self.on_commit:
            try:
                callback(info, seconds)
            except Exception:
                log.exception("on_commit callback failed for %s", name)
        try:
            self._retain()
        except (StorageError, OSError) as err:
            # The new checkpoint is committed; old ones linger until the next commit's retention.
            log.warning("checkpoint retention in %s failed, will retry at the next commit: %s",
                        self.storage.uri, err)

    def _upload(self, job: _Job, name: str) -> tuple[CheckpointInfo, float]:
        started = time.monotonic()
        files = [_file_entry(p.relative_to(job.snapshot).as_posix(), p.stat().st_size, _sha256(p))
                 for p in _checkpoint_files(job.snapshot)]
        info = CheckpointInfo(name=name, step=job.step, epoch=job.epoch,
                              metric=None if job.metric is None else float(job.metric), created=now_iso(),
                              files=files)
        self.fence()
        # Leftovers of a crashed upload, or an earlier save of the same step: un-commit and clear them
        # first, so stale files never mix with the new ones.
        if self.outage.call(lambda: self.storage.list(name), f"listing {name}"):
            self._retry(lambda: self._remove(name), f"clearing {name}")
        target = self.storage.child(name)
        # Concurrently: on a store with 2 s per request, one file after another took 44 s a checkpoint,
        # more than a SIGTERM grace period has to spare. Bounded, so that many files do not flood the store.
        with ThreadPoolExecutor(self.upload_workers, thread_name_prefix="checkpoint-file") as pool:
            uploads = [pool.submit(self._retry, lambda e=entry: target.upload_file(job.snapshot / e["path"],
                                                                                   e["path"]),
                                   f"{name}/{entry['path']}") for entry in files]
            for upload in uploads:
                upload.result()
        stored = self.outage.call(target.sizes, f"listing {name}")
        wrong = [f["path"] for f in files if stored.get(f["path"]) != f["size"]]
        if wrong:
            raise CheckpointError(f"{name}: stored sizes differ from the local files for {', '.join(wrong)}")
        self.fence()
        self._retry(lambda: target.write_text(MANIFEST, info.to_json()), f"{name}/{MANIFEST}")
        return info, time.monotonic() - started

    def _retry(self, action: Callable[[], object], what: str) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                self.outage.call(action, what)
                return
            except StorageOutageError as err:
                raise CheckpointError(f"{what}: {err}") from err
            except (StorageError, OSError) as err:
                if attempt == self.attempts:
                    raise CheckpointError(f"{what}: {err} (gave up after {attempt} attempts)") from err
                delay = self.retry_delay * 2 ** (attempt - 1)
                log.warning("%s: attempt %d failed (%s); retrying in %.1f s", what, attempt, err, delay)
                time.sleep(delay)

    def _remove(self, name: str) -> None:
        self.storage.delete(f"{name}/{MANIFEST}")  # un-commit first: a deletion cut short stays invisible
        self.storage.delete(name)

    def _retain(self) -> None:
        """Keep the `keep_last` most recent committed checkpoints, the latest and the best; remove the other
        committed ones and every incomplete checkpoint directory. Damaged ones are left alone."""
        committed, incomplete, damaged = self._scan()
        for name, reason in damaged.items():
            log.warning("retention: keeping damaged %s in %s: %s", name, self.storage.uri, reason)
        keep = {info.name for info in committed[-self.keep_last:]}
        best = _best(committed)
        if best is not None:
            keep.add(best.name)
        for info in committed:
            if info.name not in keep:
                log.info("retention: deleting %s from %s", info.name, self.storage.uri)
                self._remove(info.name)
        for name in incomplete:
            log.info("retention: deleting incomplete %s from %s", name, self.storage.uri)
            self._remove(name)

    # -- reading -----------------------------------------------------------------------------------------

    def _scan(self) -> tuple[list[CheckpointInfo], list[str], dict[str, str]]:
        """(committed checkpoints sorted by step, names of incomplete checkpoint directories, damaged
        checkpoint name -> why it cannot be used), names in step order."""
        by_dir: dict[str, dict[str, int]] = {}
        for key, size in self.storage.sizes().items():
            top, _, rest = key.partition("/")
            if _NAME.fullmatch(top) and rest:
                by_dir.setdefault(top, {})[rest] = size
        committed, incomplete, damaged = [], [], {}
        for name, stored in sorted(by_dir.items(), key=lambda item: _step(item[0])):
            if MANIFEST not in stored:
                incomplete.append(name)
                continue
            try:
                info = self._read_manifest(name)
            except FileNotFoundError:
                incomplete.append(name)  # deleted since the listing
                continue
            except ValueError as err:
                damaged[name] = str(err)
                continue
            if problem := _missing_or_resized(info, stored):
                damaged[name] = problem
            else:
                committed.append(info)
        committed.sort(key=lambda i: i.step)
        return committed, incomplete, damaged

    def _read_manifest(self, name: str) -> CheckpointInfo:
        """The manifest of `name`; ValueError says why it is unusable."""
        info = CheckpointInfo.from_json(self.storage.read_bytes(f"{name}/{MANIFEST}"))
        if info.name != name:
            raise ValueError(f"its manifest names {info.name}")
        return info

    def damaged(self) -> dict[str, str]:
        """Checkpoints with a manifest that cannot be resumed from, in step order, each with the reason."""
        return self._scan()[2]

    def committed(self) -> list[CheckpointInfo]:
        """Checkpoints with a valid manifest whose files are all present, sorted by step."""
        return self._scan()[0]

    def latest(self) -> CheckpointInfo | None:
        committed = self.committed()
        return committed[-1] if committed else None

    def best(self) -> CheckpointInfo | None:
        """The committed checkpoint with the lowest metric (the earliest among equals), if any has one."""
        return _best(self.committed())

    def resolve(self, spec: str) -> CheckpointInfo | None:
        """"latest" (None when nothing is committed yet) or a checkpoint name; CheckpointError otherwise."""
        if spec == "latest":
            return self.latest()
        committed, incomplete, damaged = self._scan()
        for info in committed:
            if info.name == spec:
                return info
        names = ", ".join(i.name for i in committed) or "none"
        if spec in damaged:
            raise CheckpointError(f"checkpoint {spec!r} in {self.storage.uri} is damaged: {damaged[spec]}; "
                                  f"committed checkpoints: {names}")
        if spec in incomplete:
            raise CheckpointError(f"checkpoint {spec!r} in {self.storage.uri} is incomplete (its upload "
                                  "never finished, so it has no valid manifest); committed checkpoints: "
                                  f"{names}")
        raise CheckpointError(f"no checkpoint {spec!r} in {self.storage.uri}; use 'latest' or one of the "
                              f"committed checkpoints: {names}")

    def fetch(self, name: str, local_dir: Path) -> Path:
        """Download committed checkpoint `name` into `local_dir` (its files directly inside, plus the
        manifest), verifying every file's size and sha256; returns `local_dir`."""
        info = self.resolve(name)
        if info is None:
            raise CheckpointError(f"no committed checkpoint in {self.storage.uri} to fetch")
        local_dir = Path(local_dir)
        source = self.storage.child(info.name)
        for entry in info.files:
            dest = local_dir / entry["path"]
            self._retry(lambda e=entry, d=dest: self._download(source, e, d),
                        f"fetching {info.name}/{entry['path']}")
        (local_dir / MANIFEST).write_text(info.to_json())
        return local_dir

    @staticmethod
    def _download(source: Storage, entry: dict[str, Any], dest: Path) -> None:
        source.download_file(entry["path"], dest)
        size, digest = dest.stat().st_size, _sha256(dest)
        if size != entry["size"] or digest != entry["sha256"]:
            dest.unlink()
            raise StorageError(f"downloaded {entry['path']} does not match the manifest "
                               f"({size} bytes, sha256 {digest[:12]}…; expected {entry['size']} bytes, "
                               f"{entry['sha256'][:12]}…)")


def _step(name: str) -> int:
    return int(name.split("-")[1])


def _missing_or_resized(info: CheckpointInfo, stored: dict[str, int]) -> str | None:
    """What of the manifest's objects is not in storage as listed, or None when all are."""
    missing = [f["path"] for f in info.files if f["path"] not in stored]
    if missing:
        return f"its manifest lists {len(missing)} object(s) missing from storage: {', '.join(missing)}"
    resized = [f"{f['path']} ({stored[f['path']]} bytes, manifest says {f['size']})" for f in info.files
               if stored[f["path"]] != f["size"]]
    return f"stored sizes differ from its manifest: {', '.join(resized)}" if resized else None


def _best(committed: list[CheckpointInfo]) -> CheckpointInfo | None:
    scored = [i for i in committed if i.metric is not None and not math.isnan(i.metric)]
    return min(scored, key=lambda i: (i.metric, i.step)) if scored else None
