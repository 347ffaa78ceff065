"""S3Storage against moto's S3 server over HTTP: the Storage contract, multipart uploads, verification,
datasets on S3, and no secrets in logs or errors."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import boto3
import pytest

from support.s3 import BUCKET, SECRET_KEY, FaultProxy
from tunewright.data import synthetic
from tunewright.data.store import DatasetError, DatasetStore, open_dataset
from tunewright.storage import DATASET_ENV_PREFIX, S3Storage, StorageError, open_storage

MiB = 2**20


def raw_client() -> object:
    """A boto3 client of the test's own, to look at the bucket without going through S3Storage."""
    return boto3.session.Session().client("s3")


def test_storage_contract_on_s3(s3_root: str, tmp_path: Path) -> None:
    root = open_storage(s3_root)
    assert isinstance(root, S3Storage)
    runs = root.child("runs")
    runs.write_text("a/config.json", '{"x": 1}')
    runs.write_bytes("a/metrics.jsonl", b"1\n2\n")
    runs.write_bytes("b/progress.json", b"{}")

    assert root.read_text("runs/a/config.json") == '{"x": 1}'
    assert runs.list() == ["a/config.json", "a/metrics.jsonl", "b/progress.json"]
    assert runs.list("a") == ["a/config.json", "a/metrics.jsonl"]
    assert runs.list("a/config.json") == ["a/config.json"]
    assert runs.list("ab") == []  # a prefix is a directory, not a string prefix
    assert runs.list_dirs() == ["a", "b"]
    assert runs.sizes("a") == {"a/config.json": 8, "a/metrics.jsonl": 4}
    assert runs.size("a/metrics.jsonl") == 4
    assert runs.exists("a/config.json") and runs.exists("a") and not runs.exists("c") and not runs.exists("a/x")

    with pytest.raises(FileNotFoundError, match=f"{s3_root}/runs/a/missing.json does not exist"):
        runs.read_bytes("a/missing.json")
    with pytest.raises(FileNotFoundError, match="missing"):
        runs.download_file("a/missing.json", tmp_path / "missing.json")
    assert not list(tmp_path.iterdir()), "a failed download left a file behind"
    with pytest.raises(FileNotFoundError):
        runs.size("nope")

    (tmp_path / "up" / "sub").mkdir(parents=True)
    (tmp_path / "up" / "sub" / "w.bin").write_bytes(b"w" * 10)
    (tmp_path / "up" / "top.txt").write_text("top")
    assert runs.upload_dir(tmp_path / "up", "c") == ["c/sub/w.bin", "c/top.txt"]
    down = runs.download_dir("c", tmp_path / "down")
    assert (down / "sub" / "w.bin").read_bytes() == b"w" * 10 and (down / "top.txt").read_text() == "top"

    runs.delete("a")
    assert runs.list_dirs() == ["b", "c"]
    with pytest.raises(StorageError, match="refusing to delete a whole storage root"):
        runs.delete("")
    with pytest.raises(StorageError, match=r"'\.\.' is not allowed"):
        runs.read_bytes("../escape")


def test_large_files_are_uploaded_in_parts_and_downloaded_intact(s3_root: str, tmp_path: Path) -> None:
    # S3's smallest part is 5 MiB; the production threshold is 64 MiB, lowered here to keep the test cheap.
    root = S3Storage(s3_root, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    big = tmp_path / "optimizer.pt"
    big.write_bytes(os.urandom(5 * MiB + 12345))
    root.child("ckpt").upload_file(big, "optimizer.pt")  # verifies size and the multipart ETag itself

    head = raw_client().head_object(Bucket=BUCKET, Key=f"{root.prefix}/ckpt/optimizer.pt")
    assert head["ETag"].strip('"').endswith("-2"), "not a two-part multipart upload"
    assert head["ContentLength"] == big.stat().st_size

    root.download_file("ckpt/optimizer.pt", tmp_path / "back" / "optimizer.pt")
    assert (tmp_path / "back" / "optimizer.pt").read_bytes() == big.read_bytes()
    assert [p.name for p in (tmp_path / "back").iterdir()] == ["optimizer.pt"]


def test_upload_verification_catches_a_wrong_etag(s3_root: str, s3_faults: FaultProxy, tmp_path: Path) -> None:
    local = tmp_path / "adapter_model.safetensors"
    local.write_bytes(b"weights" * 100)
    root = open_storage(s3_root)
    s3_faults.fail_next("bad-etag", method="HEAD")
    with pytest.raises(StorageError, match=r"adapter_model\.safetensors is corrupt: ETag"):
        root.upload_file(local, "adapter_model.safetensors")
    root.upload_file(local, "adapter_model.safetensors")  # the same upload verifies when S3 is honest


def test_dataset_import_to_s3_and_back(s3_root: str, tmp_path: Path) -> None:
    rows = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(5)]
    src = tmp_path / "prefs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))

    meta = DatasetStore(s3_root).import_file("prefs-v1", src, kind="preference")

    again = DatasetStore(s3_root)  # a fresh reader, as another process would be
    assert again.meta("prefs-v1") == meta and meta.samples == 5
    assert [m.id for m in again.list()] == ["prefs-v1"]
    assert [r.model_dump() for r in again.rows("prefs-v1")] == rows
    prefix = s3_root.removeprefix(f"s3://{BUCKET}/")
    keys = [o["Key"] for o in raw_client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]]
    assert sorted(keys) == [f"{prefix}/datasets/prefs-v1/meta.json", f"{prefix}/datasets/prefs-v1/samples.jsonl"]
    with pytest.raises(DatasetError, match="already exists"):
        again.import_file("prefs-v1", src, kind="preference")


def test_errors_name_the_object_and_never_the_secret(s3_root: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # botocore included: even its debug logs must not carry the secret
    caplog.set_level(logging.DEBUG, logger="botocore")  # an in-process tunewright-train set it to WARNING
    messages = []
    for action in (
        lambda: open_storage(s3_root).read_bytes("missing.json"),
        lambda: open_storage("s3://no-such-bucket-tw/x").write_text("a.json", "{}"),
        lambda: open_storage("s3://no-such-bucket-tw/x").list(),
    ):
        with pytest.raises((FileNotFoundError, StorageError)) as err:
            action()
        messages.append(str(err.value))
    open_storage(s3_root).write_text("ok.json", "{}")

    assert messages[0] == f"{s3_root}/missing.json does not exist"
    assert "s3://no-such-bucket-tw/x/a.json" in messages[1] and "does not exist" in messages[1]
    assert "no-such-bucket-tw" in messages[2]
    assert caplog.records, "botocore logged nothing at DEBUG: the check below would prove nothing"
    for text in [*messages, caplog.text]:
        assert SECRET_KEY not in text


def test_a_dataset_is_read_with_its_own_credentials(s3_root: str, s3_env: dict[str, str], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer pod of a job whose Dataset names its own Secret gets it as TUNEWRIGHT_DATASET_AWS_*: the
    dataset is read with those (endpoint included), whatever the run's own are."""
    DatasetStore(open_storage(s3_root)).import_file(
        "songs", synthetic.write_jsonl(synthetic.rated_rows(), tmp_path / "songs.jsonl"), "rated")
    for name, value in s3_env.items():
        monkeypatch.setenv(DATASET_ENV_PREFIX + name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the run's store: not where the dataset is
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    ds, meta = open_dataset(f"{s3_root}/datasets/songs")
    assert isinstance(ds, S3Storage) and meta.id == "songs"
    monkeypatch.delenv(DATASET_ENV_PREFIX + "AWS_ACCESS_KEY_ID")  # no dataset credentials: the run's are used
    with pytest.raises(StorageError, match="Could not connect to the endpoint URL"):
        open_dataset(f"{s3_root}/datasets/songs")
