"""Storage roots addressed by URI: `file:///abs/path`, `file://./relative` or `s3://bucket/prefix`.

Keys are '/'-separated paths relative to the root. Writes are atomic for readers: a local file appears
whole (temp file + rename) and an S3 object appears whole by S3's own semantics. An `exclusive` write
creates the key only if it does not exist (a hard link of the temp file, or S3's conditional write
`If-None-Match: *`): of concurrent writers exactly one succeeds, the others get FileExistsError (an S3
write whose answer was lost and whose retry then meets its own object is recognised by size and MD5 ETag, and
succeeds). A failed local write removes its temp file. S3 settings (endpoint,
region, credentials) come from the standard AWS environment/config, so AWS, MinIO and Ceph all work;
retries of transient errors (5xx, throttling, resets) use botocore's standard retry mode; once those are spent
the StorageError says `transient` (see tunewright.outages for riding out longer outages). Large files are
uploaded in parts and every upload is verified (size, and ETag where it is an MD5); downloads stream to
disk. Error messages name the object, never credentials.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import shutil
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

DEFAULT_ROOT = "file://./.tunewright"
log = logging.getLogger(__name__)


class StorageError(RuntimeError):
    """`transient`: the store may answer if asked again later (unreachable, 5xx, throttled), as opposed to a
    refusal or a fault in what was sent (access denied, no such bucket, a corrupt upload)."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


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
    def write_bytes(self, key: str, data: bytes, exclusive: bool = False) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key (recursively) under prefix, relative to this root, sorted."""

    @abstractmethod
    def delete(self, prefix: str) -> None:
        """Delete a key or everything under a prefix."""

    @abstractmethod
    def upload_file(self, local: str | Path, key: str, exclusive: bool = False) -> None: ...

    @abstractmethod
    def download_file(self, key: str, local: str | Path) -> None: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    def sizes(self, prefix: str = "") -> dict[str, int]:
        """Every key (recursively) under prefix with its size in bytes, sorted by key."""
        return {key: self.size(key) for key in self.list(prefix)}

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str, exclusive: bool = False) -> None:
        self.write_bytes(key, text.encode("utf-8"), exclusive)

    def list_dirs(self, prefix: str = "") -> list[str]:
        """Names of the immediate sub-prefixes of `prefix`."""
        prefix = clean_key(prefix)
        depth = len(prefix.split("/")) if prefix else 0
        return sorted({k.split("/")[depth] for k in self.list(prefix) if len(k.split("/")) > depth + 1})

    def upload_dir(self, local: str | Path, prefix: str, exclusive: bool = False) -> list[str]:
        """Upload every file under `local` to `prefix/...`; returns the keys written."""
        keys = []
        for path in sorted(Path(local).rglob("*")):
            if path.is_file():
                key = clean_key(f"{prefix}/{path.relative_to(local).as_posix()}")
                self.upload_file(path, key, exclusive)
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


def _make_parents(directory: Path) -> list[Path]:
    """mkdir -p, returning the directories it created (deepest last)."""
    missing = [d for d in [directory, *directory.parents] if not d.exists()][::-1]
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty(created: list[Path]) -> None:
    """Undo _make_parents after a failed write, leaving any directory another writer has filled meanwhile."""
    for d in reversed(created):
        with contextlib.suppress(OSError):
            d.rmdir()


class LocalStorage(Storage):
    def __init__(self, uri: str):
        self.root = Path(uri.removeprefix("file://")).expanduser().absolute()
        self.uri = f"file://{self.root}"  # absolute, so URIs recorded in reports stay valid from anywhere

    def _path(self, key: str) -> Path:
        return self.root / clean_key(key)

    def local_path(self) -> Path:
        return self.root

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri}/{clean_key(key)} does not exist") from None

    def write_bytes(self, key: str, data: bytes, exclusive: bool = False) -> None:
        path = self._path(key)
        created = _make_parents(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            self._publish(Path(tmp), path, exclusive)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            _remove_empty(created)
            raise
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _publish(self, tmp: Path, path: Path, exclusive: bool) -> None:
        """Move a complete temp file into place; exclusive: a hard link, which fails if `path` exists."""
        if not exclusive:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(f"{self.uri}/{path.relative_to(self.root).as_posix()} already exists") from None

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

    def upload_file(self, local: str | Path, key: str, exclusive: bool = False) -> None:
        dest = self._path(key)
        if Path(local).absolute() == dest:
            if exclusive:
                raise FileExistsError(f"{self.uri}/{clean_key(key)} already exists")
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        os.close(fd)
        try:
            shutil.copyfile(local, tmp)
            self._publish(Path(tmp), dest, exclusive)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def download_file(self, key: str, local: str | Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise FileNotFoundError(f"{self.uri}/{clean_key(key)} does not exist")
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        if src.absolute() != local.absolute():
            shutil.copyfile(src, local)

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri}/{clean_key(key)} does not exist") from None


_CLIENTS: dict[str, Any] = {}
_CLIENTS_LOCK = threading.Lock()
_CLIENT_ENV = (
    "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
    "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE",
)


# A dataset's own S3 credentials and endpoint, as TUNEWRIGHT_DATASET_AWS_ACCESS_KEY_ID etc. (the operator passes
# a Dataset resource's Secret to the trainer with this prefix when it is not the job's storage Secret).
DATASET_ENV_PREFIX = "TUNEWRIGHT_DATASET_"


def s3_client(prefix: str = "") -> Any:
    """A boto3 S3 client from the standard AWS environment (each variable read as `<prefix>AWS_...`), shared
    while that environment is unchanged.

    Retries of transient faults (5xx, throttling/SlowDown, connection resets, timeouts) use botocore's
    standard mode: exponential backoff with jitter, 8 attempts unless AWS_MAX_ATTEMPTS says otherwise.
    boto3 clients are thread-safe but creating them from the shared default session is not, hence the lock
    and a session per client.
    """
    env = {name: os.environ.get(prefix + name) for name in _CLIENT_ENV}
    # Hashed so that no secret sits in a printable structure.
    key = hashlib.sha256(repr([prefix, *env.values()]).encode()).hexdigest()
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            import boto3
            from botocore.config import Config

            retries = {"mode": env["AWS_RETRY_MODE"] or "standard",
                       "total_max_attempts": int(env["AWS_MAX_ATTEMPTS"] or 8)}
            endpoint = env["AWS_ENDPOINT_URL_S3"] or env["AWS_ENDPOINT_URL"] or None
            credentials = {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
                           "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
                           "aws_session_token": env["AWS_SESSION_TOKEN"],
                           "region_name": env["AWS_REGION"] or env["AWS_DEFAULT_REGION"]} if prefix else {}
            _CLIENTS[key] = boto3.session.Session().client(
                "s3", endpoint_url=endpoint, **credentials,
                config=Config(retries=retries, connect_timeout=10, read_timeout=60),  # type: ignore[arg-type]
            )
        return _CLIENTS[key]


def _error_code(err: Exception) -> str:
    return str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))


_MISSING = {"404", "NoSuchKey", "NotFound"}
# A conditional write lost: the key exists (412), or another conditional write of it is in flight (409).
_EXISTS = {"PreconditionFailed", "412", "ConditionalRequestConflict"}


_BUSY = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestLimitExceeded"}


def _transient(err: Exception) -> bool:
    """A server error or throttling (botocore's retries spent): the same request may succeed later."""
    status = int(getattr(err, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return status >= 500 or _error_code(err) in _BUSY


def _if_new(exclusive: bool) -> dict[str, str]:
    return {"IfNoneMatch": "*"} if exclusive else {}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
           "InvalidToken"}


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _md5_range(path: Path, offset: int, length: int) -> Any:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        fh.seek(offset)
        while length > 0 and (block := fh.read(min(length, 2**20))):
            digest.update(block)
            length -= len(block)
    return digest


def s3_etag(path: Path, multipart_threshold: int, multipart_chunksize: int) -> str:
    """The ETag S3 gives an unencrypted (or SSE-S3) object uploaded by boto3 with these settings:
    md5 of the body, or for multipart uploads md5 of the parts' md5s plus '-<parts>'."""
    from s3transfer.utils import ChunksizeAdjuster

    size = path.stat().st_size
    if size < multipart_threshold:
        return _md5_range(path, 0, size).hexdigest()
    part = ChunksizeAdjuster().adjust_chunksize(multipart_chunksize, size)
    digests = [_md5_range(path, offset, part).digest() for offset in range(0, size, part)]
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


class S3Storage(Storage):
    """An `s3://bucket/prefix` root. Files at or above `multipart_threshold` bytes are uploaded in parts
    of `multipart_chunksize` (boto3's transfer manager, streaming from disk); downloads stream to disk."""

    MULTIPART_THRESHOLD = 64 * 2**20
    MULTIPART_CHUNKSIZE = 64 * 2**20
    # Re-reads of a response body cut mid-stream: botocore's retries stop once the headers have arrived.
    STREAM_ATTEMPTS = 4

    def __init__(self, uri: str, client: Any = None, multipart_threshold: int = MULTIPART_THRESHOLD,
                 multipart_chunksize: int = MULTIPART_CHUNKSIZE):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise StorageError(f"S3 URI {uri!r} names no bucket: use s3://bucket/prefix")
        self.uri = uri.rstrip("/")
        self.bucket = bucket
        self.prefix = clean_key(prefix)
        self._client = client
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize

    @property
    def client(self) -> Any:
        return self._client if self._client is not None else s3_client()

    def _key(self, key: str) -> str:
        key = clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix and key else (self.prefix or key)

    def _uri(self, key: str) -> str:
        return f"{self.uri}/{clean_key(key)}" if clean_key(key) else self.uri

    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Turn botocore errors into FileNotFoundError / StorageError naming the object, never credentials."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            yield
        except ClientError as err:
            code = _error_code(err)
            if code in _MISSING:
                raise FileNotFoundError(f"{self._uri(key)} does not exist") from None
            if code in _EXISTS:
                raise FileExistsError(f"{self._uri(key)} already exists") from None
            if code == "NoSuchBucket":
                raise StorageError(f"cannot {action} {self._uri(key)}: bucket {self.bucket!r} "
                                   "does not exist") from err
            if code in _DENIED:
                raise StorageError(f"cannot {action} {self._uri(key)}: access denied ({code}); check the AWS "
                                   "credentials and the bucket policy") from err
            raise StorageError(f"cannot {action} {self._uri(key)}: {err}", transient=_transient(err)) from err
        except NoCredentialsError:
            raise StorageError(f"cannot {action} {self._uri(key)}: no AWS credentials found (set "
                               "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS profile)") from None
        except BotoCoreError as err:  # connection refused or reset, timeouts: botocore's retries are spent
            raise StorageError(f"cannot {action} {self._uri(key)}: {err}", transient=True) from err

    def child(self, *parts: str) -> Storage:
        sub = clean_key("/".join(parts))
        if not sub:
            return self
        return S3Storage(f"{self.uri}/{sub}", self._client, self.multipart_threshold,
                         self.multipart_chunksize)

    def read_bytes(self, key: str) -> bytes:
        from botocore.exceptions import HTTPClientError, IncompleteReadError

        for attempt in range(1, self.STREAM_ATTEMPTS + 1):
            with self._errors("read", key):
                try:
                    return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
                except (HTTPClientError, IncompleteReadError):
                    if attempt == self.STREAM_ATTEMPTS:
                        raise
            time.sleep(0.1 * 2**attempt * random.random())
        raise AssertionError("unreachable")

    def write_bytes(self, key: str, data: bytes, exclusive: bool = False) -> None:
        with self._errors("write", key), self._own_retried_write(key, len(data), _md5(data) if exclusive else None):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **_if_new(exclusive))

    @contextmanager
    def _own_retried_write(self, key: str, size: int, etag: str | None) -> Iterator[None]:
        """An exclusive write (`etag` given: the ETag it stores) that botocore sent again because the answer to
        the first attempt was lost, although the server had stored it, is refused by its own condition (412,
        or NoSuchUpload for a completed multipart upload). It succeeded when the stored object is the one
        sent: same size and ETag (MD5). A first attempt refused is always a conflict; so is an encrypted
        object, whose ETag is no MD5. (Another writer that stored identical bytes meanwhile is taken for us:
        both wrote the same thing.)"""
        from botocore.exceptions import ClientError

        try:
            yield
        except ClientError as err:
            meta = err.response.get("ResponseMetadata", {})
            if etag is None or not meta.get("RetryAttempts") or _error_code(err) not in {*_EXISTS, "NoSuchUpload"}:
                raise
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError:
                raise err from None
            ours = (int(head["ContentLength"]) == size and head["ETag"].strip('"') == etag
                    and not head.get("ServerSideEncryption") and not head.get("SSECustomerAlgorithm"))
            if not ours:
                raise
            log.info("%s: stored by an attempt whose answer was lost (its retry found it)", self._uri(key))

    def exists(self, key: str) -> bool:
        """True for an object, and (like a local directory) for a prefix with objects under it."""
        try:
            self.size(key)
            return True
        except FileNotFoundError:
            return bool(clean_key(key)) and next(self._iter_objects(key), None) is not None

    def _iter_objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        full = self._key(prefix)
        if full:
            full += "/"
        with self._errors("list", prefix):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                yield from page.get("Contents", [])

    def sizes(self, prefix: str = "") -> dict[str, int]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        found = {obj["Key"][strip:]: int(obj["Size"]) for obj in self._iter_objects(prefix)}
        if not found and clean_key(prefix):
            try:
                return {clean_key(prefix): self.size(prefix)}
            except FileNotFoundError:
                return {}
        return dict(sorted(found.items()))

    def list(self, prefix: str = "") -> list[str]:
        return list(self.sizes(prefix))

    def delete(self, prefix: str) -> None:
        if not clean_key(prefix):
            raise StorageError("refusing to delete a whole storage root")
        keys = [{"Key": self._key(k)} for k in self.list(prefix)]
        for i in range(0, len(keys), 1000):
            with self._errors("delete", prefix):
                response = self.client.delete_objects(Bucket=self.bucket,
                                                      Delete={"Objects": keys[i : i + 1000]})
            if errors := response.get("Errors"):
                first = errors[0]
                raise StorageError(f"cannot delete {self._uri(prefix)}: {len(errors)} object(s) failed, e.g. "
                                   f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}")

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        # "classic": the part layout must be the one s3_etag() predicts (the CRT client picks its own).
        return TransferConfig(multipart_threshold=self.multipart_threshold,
                              multipart_chunksize=self.multipart_chunksize,
                              preferred_transfer_client="classic")

    def upload_file(self, local: str | Path, key: str, exclusive: bool = False) -> None:
        """Upload (multipart above the threshold), then verify the stored size and, for unencrypted objects,
        the ETag (the MD5, or MD5 of part MD5s); a mismatch raises StorageError.

        Encrypted objects are not ETag-checked: only AWS promises an MD5 ETag under SSE-S3 (MinIO, for one,
        may not), and never under KMS or customer keys. Their bytes are still checked in transit: botocore
        sends a CRC32 checksum with every PUT and part, which the server verifies."""
        local = Path(local)
        size = local.stat().st_size
        etag = s3_etag(local, self.multipart_threshold, self.multipart_chunksize) if exclusive else None
        with self._errors("upload to", key), self._own_retried_write(key, size, etag):
            if size < self.multipart_threshold:
                # One PUT: boto3's transfer manager starts a thread pool per file, which costs more CPU than
                # uploading a small file (a checkpoint is ~10 of them, uploaded while training runs).
                with local.open("rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body, **_if_new(exclusive))
            elif exclusive:
                self._upload_parts_if_new(local, key, size)
            else:
                self.client.upload_file(str(local), self.bucket, self._key(key), Config=self._transfer_config())
        with self._errors("upload to", key):
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        if int(head["ContentLength"]) != size:
            raise StorageError(f"upload of {local} to {self._uri(key)} stored {head['ContentLength']} bytes, "
                               f"expected {size}")
        if not head.get("ServerSideEncryption") and not head.get("SSECustomerAlgorithm"):
            expected = etag or s3_etag(local, self.multipart_threshold, self.multipart_chunksize)
            if head["ETag"].strip('"') != expected:
                raise StorageError(f"upload of {local} to {self._uri(key)} is corrupt: ETag {head['ETag']}, "
                                   f"expected {expected!r}")

    def _upload_parts_if_new(self, local: Path, key: str, size: int) -> None:
        """A multipart upload completed with `If-None-Match: *` (boto3's transfer manager cannot pass that
        condition), in the part size the transfer manager would use, so s3_etag() still predicts the ETag."""
        from s3transfer.utils import ChunksizeAdjuster

        part = ChunksizeAdjuster().adjust_chunksize(self.multipart_chunksize, size)
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=self._key(key))["UploadId"]
        try:
            parts = []
            with local.open("rb") as fh:
                for number, offset in enumerate(range(0, size, part), start=1):
                    fh.seek(offset)
                    etag = self.client.upload_part(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id,
                                                   PartNumber=number, Body=fh.read(part))["ETag"]
                    parts.append({"PartNumber": number, "ETag": etag})
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id,
                                                  MultipartUpload={"Parts": parts}, IfNoneMatch="*")
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id)
            raise

    def download_file(self, key: str, local: str | Path) -> None:
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.part")
        try:
            with self._errors("download", key):
                self.client.download_file(self.bucket, self._key(key), str(tmp),
                                          Config=self._transfer_config())
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def size(self, key: str) -> int:
        with self._errors("stat", key):
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])


def dataset_storage(uri: str) -> Storage:
    """A dataset directory: read with the dataset's own credentials (DATASET_ENV_PREFIX) when they are given,
    else with the run's."""
    if uri.startswith("s3://") and os.environ.get(DATASET_ENV_PREFIX + "AWS_ACCESS_KEY_ID"):
        return S3Storage(uri, s3_client(DATASET_ENV_PREFIX))
    return open_storage(uri)


def open_storage(uri: str | None = None) -> Storage:
    uri = storage_root_uri(uri)
    if uri.startswith("s3://"):
        return S3Storage(uri)
    if uri.startswith("file://"):
        return LocalStorage(uri)
    if "://" not in uri:
        return LocalStorage("file://" + uri)
    raise StorageError(f"unsupported storage URI {uri!r}: use file://... or s3://bucket/prefix")
