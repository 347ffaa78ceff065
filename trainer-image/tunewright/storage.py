"""Storage roots addressed by URI: `file:///abs/path`, `file://./relative` or `s3://bucket/prefix`.

Keys are '/'-separated paths relative to the root. Writes are atomic for readers: a local file appears
whole (temp file + rename) and an S3 object appears whole by S3's own semantics. S3 settings (endpoint,
region, credentials) come from the standard AWS environment/config, so AWS, MinIO and Ceph all work;
retries of transient errors (5xx, throttling, resets) use botocore's standard retry mode.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

DEFAULT_ROOT = "file://./.tunewright"


class StorageError(RuntimeError):
    pass


def storage_root_uri(explicit: str | None = None) -> str:
    return explicit or os.environ.get("TUNEWRIGHT_STORAGE") or DEFAULT_ROOT


def clean_key(key: str) -> str:
    """Normalise a key and refuse anything that could escape the root."""
    parts = [p for p in str(key).replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise StorageError(f"refusing storage key {key!r}: '..' is not allowed")
    return "/".join(parts)


class Storage(ABC):
    """A root under which keys are read and written."""

    uri: str

    def child(self, *parts: str) -> Storage:
        """A storage rooted at a sub-prefix of this one."""
        sub = clean_key("/".join(parts))
        return open_storage(self.uri.rstrip("/") + "/" + sub) if sub else self

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key (recursively) under prefix, relative to this root, sorted."""

    @abstractmethod
    def delete(self, prefix: str) -> None:
        """Delete a key or everything under a prefix."""

    @abstractmethod
    def upload_file(self, local: str | Path, key: str) -> None: ...

    @abstractmethod
    def download_file(self, key: str, local: str | Path) -> None: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def list_dirs(self, prefix: str = "") -> list[str]:
        """Names of the immediate sub-prefixes of `prefix`."""
        prefix = clean_key(prefix)
        depth = len(prefix.split("/")) if prefix else 0
        return sorted({k.split("/")[depth] for k in self.list(prefix) if len(k.split("/")) > depth + 1})

    def upload_dir(self, local: str | Path, prefix: str) -> list[str]:
        """Upload every file under `local` to `prefix/...`; returns the keys written."""
        keys = []
        for path in sorted(Path(local).rglob("*")):
            if path.is_file():
                key = f"{clean_key(prefix)}/{path.relative_to(local).as_posix()}"
                self.upload_file(path, key)
                keys.append(key)
        return keys

    def download_dir(self, prefix: str, local: str | Path) -> Path:
        prefix = clean_key(prefix)
        local = Path(local)
        for key in self.list(prefix):
            self.download_file(key, local / PurePosixPath(key).relative_to(prefix))
        return local

    def local_path(self) -> Path | None:
        """The directory behind a file:// root, else None."""
        return None


class LocalStorage(Storage):
    def __init__(self, uri: str):
        self.uri = uri
        raw = uri.removeprefix("file://")
        self.root = Path(raw).expanduser().absolute()

    def _path(self, key: str) -> Path:
        return self.root / clean_key(key)

    def local_path(self) -> Path:
        return self.root

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri}/{clean_key(key)} does not exist") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix)
        if base.is_file():
            return [clean_key(prefix)]
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def delete(self, prefix: str) -> None:
        path = self._path(prefix)
        if path == self.root:
            raise StorageError("refusing to delete a whole storage root")
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def upload_file(self, local: str | Path, key: str) -> None:
        dest = self._path(key)
        if Path(local).absolute() == dest:
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        shutil.copyfile(local, tmp)
        os.replace(tmp, dest)

    def download_file(self, key: str, local: str | Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise FileNotFoundError(f"{self.uri}/{clean_key(key)} does not exist")
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        if src.absolute() != local.absolute():
            shutil.copyfile(src, local)

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size


def s3_client() -> Any:
    """A boto3 S3 client from the standard AWS environment, with standard-mode retries."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None,
        config=Config(retries={"max_attempts": 8, "mode": "standard"}, connect_timeout=10, read_timeout=60),
    )


class S3Storage(Storage):
    def __init__(self, uri: str, client: Any = None):
        self.uri = uri.rstrip("/")
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise StorageError(f"S3 URI {uri!r} names no bucket")
        self.bucket = bucket
        self.prefix = clean_key(prefix)
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client()
        return self._client

    def _key(self, key: str) -> str:
        key = clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix and key else (self.prefix or key)

    def child(self, *parts: str) -> Storage:
        sub = clean_key("/".join(parts))
        return S3Storage(f"{self.uri}/{sub}", self._client) if sub else self

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"{self.uri}/{clean_key(key)} does not exist") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def _iter_objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        full = self._key(prefix)
        if full:
            full += "/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            yield from page.get("Contents", [])

    def list(self, prefix: str = "") -> list[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = [obj["Key"][strip:] for obj in self._iter_objects(prefix)]
        if not keys and clean_key(prefix) and self.exists(prefix):
            return [clean_key(prefix)]
        return sorted(keys)

    def delete(self, prefix: str) -> None:
        if not clean_key(prefix):
            raise StorageError("refusing to delete a whole storage root")
        keys = [{"Key": self._key(k)} for k in self.list(prefix)]
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[i : i + 1000]})

    def upload_file(self, local: str | Path, key: str) -> None:
        from boto3.s3.transfer import TransferConfig

        # Multipart above 64 MiB; boto3's transfer manager streams from disk.
        config = TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=64 * 2**20)
        self.client.upload_file(str(local), self.bucket, self._key(key), Config=config)

    def download_file(self, key: str, local: str | Path) -> None:
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.part")
        self.client.download_file(self.bucket, self._key(key), str(tmp))
        os.replace(tmp, local)

    def size(self, key: str) -> int:
        return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])


def open_storage(uri: str | None = None) -> Storage:
    uri = storage_root_uri(uri)
    if uri.startswith("s3://"):
        return S3Storage(uri)
    if uri.startswith("file://"):
        return LocalStorage(uri)
    if "://" not in uri:
        return LocalStorage("file://" + uri)
    raise StorageError(f"unsupported storage URI {uri!r}: use file://... or s3://bucket/prefix")
