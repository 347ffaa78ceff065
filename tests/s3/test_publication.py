"""Exclusive publication on local storage and on S3 (moto, conditional writes with If-None-Match): of two
concurrent imports of one dataset id, or registrations of one adapter version, exactly one wins, the other
gets a clear error, and the winner's data is intact."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from support.s3 import FaultProxy
from tunewright.data.store import DatasetError, DatasetStore
from tunewright.registry import AdapterRecord, DatasetProvenance, Registry, ReportSummary, VersionTaken
from tunewright.storage import S3Storage, Storage, open_storage


@pytest.fixture(params=["file", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "file":
        return open_storage(f"file://{tmp_path}/root")
    return open_storage(request.getfixturevalue("s3_root"))


def _rows(path: Path, marker: str, n: int = 20) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": f"{marker} {i}", "rating": 5}) + "\n"
                            for i in range(n)))
    return path


def _race(*bodies: Callable[[], object]) -> list[object]:
    """Run the bodies in threads released together; each result is the return value or the exception."""
    barrier = threading.Barrier(len(bodies))
    results: list[object] = [None] * len(bodies)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = bodies[i]()
        except Exception as err:  # collected for the assertions
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_exclusive_writes_refuse_an_existing_key_and_keep_it(root: Storage, tmp_path: Path) -> None:
    root.write_bytes("a/x", b"first", exclusive=True)
    with pytest.raises(FileExistsError, match="a/x already exists"):
        root.write_bytes("a/x", b"second", exclusive=True)
    (tmp_path / "f").write_bytes(b"file")
    with pytest.raises(FileExistsError):
        root.upload_file(tmp_path / "f", "a/x", exclusive=True)
    assert root.read_bytes("a/x") == b"first"
    root.upload_file(tmp_path / "f", "a/y", exclusive=True)
    assert root.read_bytes("a/y") == b"file"
    root.write_bytes("a/x", b"replaced")  # plain writes still replace
    assert root.read_bytes("a/x") == b"replaced"
    if root.local_path():
        assert sorted(p.name for p in (tmp_path / "root" / "a").iterdir()) == ["x", "y"]  # no temp files left


def test_exclusive_multipart_upload_on_s3(s3_root: str, tmp_path: Path) -> None:
    root = S3Storage(s3_root, multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20)
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * (11 * 2**20 // 256))  # 3 parts
    root.upload_file(big, "w.bin", exclusive=True)  # verified (size and multipart ETag) like any upload
    assert root.size("w.bin") == big.stat().st_size
    with pytest.raises(FileExistsError):
        root.upload_file(big, "w.bin", exclusive=True)


def test_an_exclusive_multipart_upload_whose_completion_answer_was_lost_is_ours(s3_root: str, s3_faults: FaultProxy,
                                                                               tmp_path: Path) -> None:
    root = S3Storage(s3_root, multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20)
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * (11 * 2**20 // 256))
    s3_faults.fail_next("lost", method="POST", path="uploadId=")  # CompleteMultipartUpload
    root.upload_file(big, "w.bin", exclusive=True)
    assert len(s3_faults.injected("lost")) == 1
    assert root.read_bytes("w.bin") == big.read_bytes()


@pytest.mark.parametrize("trial", range(3))
def test_two_concurrent_imports_of_one_id_exactly_one_wins(root: Storage, tmp_path: Path, trial: int) -> None:
    store = DatasetStore(root)
    a, b = _rows(tmp_path / "a.jsonl", "alpha"), _rows(tmp_path / "b.jsonl", "beta", 30)
    results = _race(lambda: store.import_file("songs", a, "rated"), lambda: store.import_file("songs", b, "rated"))
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], DatasetError), results
    assert "songs" in str(errors[0]) and "\n" not in str(errors[0])
    winner = next(r for r in results if not isinstance(r, Exception))
    rows = store.rows("songs")  # verifies the digest: the loser overwrote nothing
    assert len(rows) == winner.samples and store.meta("songs").digest == winner.digest  # type: ignore[union-attr]
    assert [m.id for m in store.list()] == ["songs"]


def test_same_file_imported_twice_at_once_is_stored_once(root: Storage, tmp_path: Path) -> None:
    store = DatasetStore(root)
    a = _rows(tmp_path / "a.jsonl", "alpha")
    results = _race(lambda: store.import_file("songs", a, "rated"), lambda: store.import_file("songs", a, "rated"))
    assert sum(isinstance(r, DatasetError) for r in results) == 1, results
    assert len(store.rows("songs")) == 20


def test_an_interrupted_import_is_finished_by_the_same_file_and_blocks_other_data(root: Storage,
                                                                                 tmp_path: Path) -> None:
    store = DatasetStore(root)
    a, b = _rows(tmp_path / "a.jsonl", "alpha"), _rows(tmp_path / "b.jsonl", "beta")
    store.import_file("first", a, "rated")
    samples = store.datasets.read_bytes("first/samples.jsonl")
    store.datasets.write_bytes("cut/samples.jsonl", samples)  # an import of a.jsonl killed before meta.json
    with pytest.raises(DatasetError, match=r"being imported from other data .* or such an import was interrupted"):
        store.import_file("cut", b, "rated")
    assert store.datasets.read_bytes("cut/samples.jsonl") == samples
    assert store.import_file("cut", a, "rated").samples == 20
    assert len(store.rows("cut")) == 20


def _record(name: str, version: int, tag: str) -> AdapterRecord:
    return AdapterRecord(name=name, version=version, base_model="tiny-llama", method="sft", uri="",
                         dataset=DatasetProvenance(uri="file:///d", digest="sha256:0"), run_id=f"run-{tag}",
                         config={}, report=ReportSummary())


def test_two_concurrent_registrations_of_one_version_exactly_one_wins(root: Storage) -> None:
    registry = Registry(root)
    results = _race(*(lambda tag=tag: registry.register(_record("songs-sft", 1, tag),
                                                        files={"adapter_model.safetensors": tag.encode() * 1000,
                                                               "adapter_config.json": tag.encode()})
                      for tag in ("a", "b")))
    assert sum(isinstance(r, VersionTaken) for r in results) == 1, results
    winner = next(r for r in results if isinstance(r, AdapterRecord))
    tag = winner.run_id.removeprefix("run-").encode()
    version = registry.version_dir("songs-sft", 1)
    assert version.read_bytes("adapter_model.safetensors") == tag * 1000
    assert version.read_bytes("adapter_config.json") == tag
    assert [r.run_id for r in registry.list()] == [winner.run_id]
    assert registry.next_version("songs-sft") == 2


def test_an_interrupted_registration_is_never_reused_and_a_corrupt_record_is_skipped(root: Storage,
                                                                                    caplog: pytest.LogCaptureFixture
                                                                                    ) -> None:
    registry = Registry(root)
    registry.register(_record("songs-sft", 1, "a"), files={"x": b"1"})
    registry.adapters.write_bytes("songs-sft/2/adapter_model.safetensors", b"half")  # no record.json
    assert registry.next_version("songs-sft") == 3
    registry.register(_record("songs-sft", 3, "c"), files={"x": b"3"})
    registry.adapters.write_bytes("songs-sft/1/record.json", b"{not json")
    assert [r.version for r in registry.list()] == [3]
    assert "songs-sft/1/record.json is corrupt" in caplog.text


def test_a_conditional_write_whose_answer_was_lost_is_recognised_as_ours(s3_root: str, s3_faults: FaultProxy,
                                                                        tmp_path: Path) -> None:
    """The server stores a conditional PUT but its answer never arrives; botocore sends it again and gets 412.
    That is our own write (the stored object is what we sent), not a conflict."""
    root = open_storage(s3_root)
    s3_faults.fail_next("lost", method="PUT", path="/a/meta.json")
    root.write_bytes("a/meta.json", b'{"id": "a"}', exclusive=True)
    (tmp_path / "f").write_bytes(b"weights" * 1000)
    s3_faults.fail_next("lost", method="PUT", path="/a/adapter_model.safetensors")
    root.upload_file(tmp_path / "f", "a/adapter_model.safetensors", exclusive=True)
    assert len(s3_faults.injected("lost")) == 2
    assert root.read_bytes("a/meta.json") == b'{"id": "a"}'
    assert root.read_bytes("a/adapter_model.safetensors") == b"weights" * 1000

    # Someone else's object stays a conflict, answer lost or not.
    for lost in ("lost", "ok"):
        s3_faults.fail_next(lost, method="PUT", path="/a/meta.json")
        with pytest.raises(FileExistsError, match=r"a/meta\.json already exists"):
            root.write_bytes("a/meta.json", b'{"id": "b"}', exclusive=True)
        s3_faults.fail_next(lost, method="PUT", path="/a/adapter_model.safetensors")
        (tmp_path / "g").write_bytes(b"other" * 1000)
        with pytest.raises(FileExistsError):
            root.upload_file(tmp_path / "g", "a/adapter_model.safetensors", exclusive=True)
    assert root.read_bytes("a/meta.json") == b'{"id": "a"}'


def test_an_import_and_a_registration_survive_lost_answers(s3_root: str, s3_faults: FaultProxy,
                                                           tmp_path: Path) -> None:
    root = open_storage(s3_root)
    s3_faults.fail_next("lost", "lost", method="PUT", path="/datasets/songs/")
    meta = DatasetStore(root).import_file("songs", _rows(tmp_path / "a.jsonl", "alpha"), "rated")
    assert len(DatasetStore(root).rows("songs")) == 20 and DatasetStore(root).meta("songs").digest == meta.digest
    s3_faults.fail_next("lost", "lost", method="PUT", path="/adapters/songs-sft/1/")
    Registry(root).register(_record("songs-sft", 1, "a"), files={"adapter_model.safetensors": b"w" * 100})
    assert [r.version for r in Registry(root).list()] == [1]
    assert len(s3_faults.injected("lost")) == 4
