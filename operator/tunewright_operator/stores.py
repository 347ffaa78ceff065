"""Storage as the operator sees it: the job's storage root, with the job's Secret's S3 credentials.

One boto3 client per distinct set of credentials and endpoint, shared by every job and thread: building a client
costs ~10 ms of CPU (it loads botocore's service model and an SSL context), and the operator opens storage at
every admission, completion and progress poll (profile of a 100-job burst: a quarter of the operator's CPU).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

from tunewright.storage import S3Storage, Storage, open_storage
from tunewright_operator.kube import Kube

_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
         "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_MAX_CLIENTS = 64  # distinct credentials at once; a rotated Secret's old client is dropped first
_clients: OrderedDict[str, Any] = OrderedDict()
_clients_lock = threading.Lock()  # boto3's default session is not thread-safe: a session per client, made here


def s3_client(env: dict[str, str]) -> Any:
    """A boto3 client from AWS_* keys (as the trainer gets them via envFrom), with standard retries; the same
    client for the same keys."""
    # Hashed so that no secret sits in a printable structure.
    key = hashlib.sha256(repr([env.get(k) for k in _KEYS]).encode()).hexdigest()
    with _clients_lock:
        if key in _clients:
            _clients.move_to_end(key)
            return _clients[key]
        import boto3
        from botocore.config import Config

        client = boto3.session.Session().client(
            "s3",
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=env.get("AWS_SESSION_TOKEN"),
            region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=20),
        )
        _clients[key] = client
        while len(_clients) > _MAX_CLIENTS:
            _clients.popitem(last=False)
        return client


def open_root(kube: Kube, namespace: str, uri: str, secret_name: str | None) -> Storage:
    """The storage root; an s3:// root with a Secret uses the Secret's credentials, else the operator's own."""
    if uri.startswith("s3://") and secret_name:
        return S3Storage(uri, s3_client(kube.secret_data(namespace, secret_name)))
    return open_storage(uri)
