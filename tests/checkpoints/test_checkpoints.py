"""CheckpointStore on both backends (file:// and moto's S3 server): commit, retention, best/latest, fetch,
incomplete checkpoints, background uploads and failures."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from support.checkpoints import digests, make_checkpoint_dir
from tunewright.storage import Storage, StorageError, open_storage
from tunewright.training.checkpoints import MANIFEST, CheckpointError, CheckpointInfo, CheckpointStore


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """A run's checkpoint root, as RunStore(root, run_id).checkpoints gives it."""
    root = f"file://{tmp_path}/store" if request.param == "file" else request.getfixturevalue("s3_root")
    return open_storage(root).child("runs", "run-1", "checkpoints")


def dirs(storage: Storage) -> list[str]:
    return storage.list_dirs()


def commit(store: CheckpointStore, tmp_path: Path, step: int, metric: float | None, seed: int = 0,
           **kwargs: dict[str, int]) -> Path:
    local = make_checkpoint_dir(tmp_path / "local", step, seed=seed, **kwargs)
    store.commit(local, step=step, epoch=step / 10, metric=metric)
    return local


def test_commit_then_fetch_round_trips_every_byte(storage: Storage, tmp_path: Path) -> None:
    store = CheckpointStore(storage, keep_last=3, background=False)
    local = commit(store, tmp_path, 10, 1.25)

    info = store.latest()
    assert info is not None
    assert (info.name, info.step, info.epoch, info.metric) == ("checkpoint-10", 10, 1.0, 1.25)
    assert {f["path"]: f["sha256"] for f in info.files} == digests(local)
    assert {f["path"]: f["size"] for f in info.files} == {
        p.relative_to(local).as_posix(): p.stat().st_size for p in local.rglob("*") if p.is_file()}
    assert CheckpointInfo.from_json(storage.read_bytes(f"checkpoint-10/{MANIFEST}")) == info

    fetched = store.fetch("checkpoint-10", tmp_path / "fetched")
    assert digests(fetched) == digests(local)
    assert CheckpointInfo.from_json((fetched / MANIFEST).read_text()) == info
    assert store.resolve("latest") == info == store.resolve("checkpoint-10") == store.best()


def test_retention_keeps_the_best_even_with_keep_last_1(storage: Storage, tmp_path: Path) -> None:
    store = CheckpointStore(storage, keep_last=1, background=False)
    seen = []
    for step, metric in [(10, 0.5), (20, 0.9), (30, 0.7), (40, None)]:
        commit(store, tmp_path, step, metric)
        seen.append([i.name for i in store.committed()])
    assert seen == [
        ["checkpoint-10"],
        ["checkpoint-10", "checkpoint-20"],
        ["checkpoint-10", "checkpoint-30"],
        ["checkpoint-10", "checkpoint-40"],
    ]
    assert dirs(storage) == ["checkpoint-10", "checkpoint-40"]
    assert store.best().name == "checkpoint-10"
    assert store.latest().name == "checkpoint-40"


def test_best_is_the_earliest_of_equal_metrics_and_keep_last_counts_recent(storage: Storage,
                                                                           tmp_path: Path) -> None:
    store = CheckpointStore(storage, keep_last=2, background=False)
    for step, metric in [(10, 0.6), (20, 0.4), (30, 0.4), (40, 0.8), (50, None)]:
        commit(store, tmp_path, step, metric)
    assert store.best().name == "checkpoint-20"
    assert [i.name for i in store.committed()] == ["checkpoint-20", "checkpoint-40", "checkpoint-50"]


def test_incomplete_checkpoints_are_invisible_then_cleaned_up_and_damaged_ones_kept(storage: Storage,
                                                                                    tmp_path: Path) -> None:
    store = CheckpointStore(storage, keep_last=5, background=False)
    commit(store, tmp_path, 10, 0.5)
    # Damaged: a manifest whose files are not all there (a file lost).
    commit(store, tmp_path, 30, 0.1)
    storage.delete("checkpoint-30/optimizer.pt")
    # A crash mid-upload: files, no manifest.
    crashed = make_checkpoint_dir(tmp_path / "crashed", 20)
    storage.upload_file(crashed / "optimizer.pt", "checkpoint-20/optimizer.pt")
    # Damaged: a manifest that is not JSON.
    storage.write_text("checkpoint-40/manifest.json", "{not json")
    storage.write_text("checkpoint-40/adapter_model.safetensors", "x")

    assert [i.name for i in store.committed()] == ["checkpoint-10"]
    assert store.latest().name == "checkpoint-10"
    assert store.best().name == "checkpoint-10"
    assert store.resolve("latest").name == "checkpoint-10"
    with pytest.raises(CheckpointError, match=r"'checkpoint-20' .* is incomplete.*committed checkpoints: "
                                              r"checkpoint-10"):
        store.resolve("checkpoint-20")
    for name, why in (("checkpoint-30", r"its manifest lists 1 object\(s\) missing from storage: optimizer\.pt"),
                      ("checkpoint-40", "invalid checkpoint manifest: JSONDecodeError")):
        with pytest.raises(CheckpointError, match=f"'{name}' .* is damaged: {why}.*committed checkpoints: "
                                                  "checkpoint-10"):
            store.resolve(name)
    with pytest.raises(CheckpointError, match=r"no checkpoint 'checkpoint-99'.*checkpoint-10"):
        store.resolve("checkpoint-99")
    with pytest.raises(CheckpointError, match="incomplete"):
        store.fetch("checkpoint-20", tmp_path / "nope")

    commit(store, tmp_path, 50, 0.3)
    assert dirs(storage) == ["checkpoint-10", "checkpoint-30", "checkpoint-40", "checkpoint-50"]


def test_nothing_committed(storage: Storage) -> None:
    store = CheckpointStore(storage, keep_last=2)
    assert store.committed() == []
    assert store.latest() is None and store.best() is None and store.resolve("latest") is None
    with pytest.raises(CheckpointError, match=r"no checkpoint 'checkpoint-5' .* committed checkpoints: none"):
        store.resolve("checkpoint-5")


def test_background_commit_does_not_block_and_survives_local_deletion(storage: Storage, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    original = type(storage).upload_file

    def gated_upload(self: Storage, local: Path, key: str) -> None:
        assert gate.wait(20)
        original(self, local, key)

    monkeypatch.setattr(type(storage), "upload_file", gated_upload)
    uploads: list[tuple[str, float]] = []
    store = CheckpointStore(storage, keep_last=2, on_commit=lambda info, secs: uploads.append((info.name, secs)))
    local = commit(store, tmp_path, 10, None)
    expected = digests(local)
    shutil.rmtree(local)  # what HF Trainer's rotation may do while the upload is still running

    assert store.latest() is None and uploads == []  # commit() returned with the upload still blocked
    gate.set()
    store.flush()
    assert [name for name, _ in uploads] == ["checkpoint-10"] and uploads[0][1] > 0
    assert digests(store.fetch("checkpoint-10", tmp_path / "fetched")) == expected
    assert not list((tmp_path / "local").iterdir()), "the upload snapshot was not removed"


def test_background_commits_run_in_order(storage: Storage, tmp_path: Path) -> None:
    calls: list[tuple[int, float]] = []
    store = CheckpointStore(storage, keep_last=2, on_commit=lambda info, secs: calls.append((info.step, secs)))
    for step in (10, 20, 30):
        commit(store, tmp_path, step, None)
    store.flush()
    assert [step for step, _ in calls] == [10, 20, 30]
    assert all(secs > 0 for _, secs in calls)
    assert [i.name for i in store.committed()] == ["checkpoint-20", "checkpoint-30"]


def test_failed_upload_fails_loudly_and_keeps_what_is_committed(storage: Storage, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    original = type(storage).upload_file
    attempts: list[str] = []

    def flaky_upload(self: Storage, local: Path, key: str) -> None:
        if "checkpoint-20" in self.uri and key == "optimizer.pt":
            attempts.append(key)
            raise StorageError("disk quota exceeded (injected)")
        original(self, local, key)

    monkeypatch.setattr(type(storage), "upload_file", flaky_upload)
    store = CheckpointStore(storage, keep_last=1, attempts=3, retry_delay=0.01)
    local10 = commit(store, tmp_path, 10, 0.5)
    commit(store, tmp_path, 20, 0.2)
    with pytest.raises(CheckpointError, match=r"checkpoint-20 could not be committed.*optimizer\.pt.*"
                                              r"disk quota exceeded \(injected\).*3 attempts"):
        store.flush()
    assert len(attempts) == 3
    assert [i.name for i in store.committed()] == ["checkpoint-10"]
    assert digests(store.fetch("checkpoint-10", tmp_path / "fetched")) == digests(local10)
    with pytest.raises(CheckpointError, match="checkpoint-20"):  # the run cannot go on without noticing
        commit(store, tmp_path, 30, 0.1)


def test_recommitting_a_step_replaces_it(storage: Storage, tmp_path: Path) -> None:
    store = CheckpointStore(storage, keep_last=2, background=False)
    commit(store, tmp_path / "a", 10, 0.5, sizes={"adapter_model.safetensors": 10, "scheduler.pt": 10})
    second = commit(store, tmp_path / "b", 10, 0.4, seed=1, sizes={"adapter_model.safetensors": 20})
    info = store.latest()
    assert info.metric == 0.4
    assert sorted(storage.list("checkpoint-10")) == sorted(f"checkpoint-10/{p}" for p in [
        "adapter_model.safetensors", "trainer_state.json", MANIFEST])
    assert digests(store.fetch("checkpoint-10", tmp_path / "fetched")) == digests(second)


def test_fetch_refuses_a_corrupted_file(storage: Storage, tmp_path: Path) -> None:
    store = CheckpointStore(storage, keep_last=2, background=False, retry_delay=0.01)
    commit(store, tmp_path, 10, None)
    manifest = json.loads(storage.read_text(f"checkpoint-10/{MANIFEST}"))
    entry = next(f for f in manifest["files"] if f["path"] == "trainer_state.json")
    storage.write_text("checkpoint-10/trainer_state.json", "X" * entry["size"])  # same size, other bytes
    with pytest.raises(CheckpointError, match=r"trainer_state\.json does not match the manifest"):
        store.fetch("checkpoint-10", tmp_path / "fetched")


def test_commit_refuses_an_empty_directory(storage: Storage, tmp_path: Path) -> None:
    store = CheckpointStore(storage, keep_last=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"cannot commit checkpoint-5: .*empty holds no files"):
        store.commit(tmp_path / "empty", step=5, epoch=0.0, metric=None)
    with pytest.raises(ValueError, match="keep_last must be at least 1"):
        CheckpointStore(storage, keep_last=0)


def test_damaged_checkpoints_are_reported_and_never_deleted_by_retention(storage: Storage, tmp_path: Path) -> None:
    store = CheckpointStore(storage, keep_last=1, background=False)
    for step in (10, 20):
        commit(store, tmp_path, step, None)
    storage.delete("checkpoint-20/optimizer.pt")  # the manifest lists it; the object is gone
    assert store.damaged() == {"checkpoint-20": "its manifest lists 1 object(s) missing from storage: optimizer.pt"}
    assert store.latest() is None  # checkpoint-10 went to retention when 20 was committed
    with pytest.raises(CheckpointError, match=r"'checkpoint-20' .* is damaged: its manifest lists 1 object\(s\) "
                                              r"missing from storage: optimizer\.pt"):
        store.resolve("checkpoint-20")

    commit(store, tmp_path, 30, None)  # retention (keepLast 1) keeps the damaged 20, with its intact files
    assert dirs(storage) == ["checkpoint-20", "checkpoint-30"]
    assert "checkpoint-20/adapter_model.safetensors" in storage.list("checkpoint-20")
