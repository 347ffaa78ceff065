"""Storage as the operator sees it: the job's storage root, with the job's Secret's S3 credentials."""

from __future__ import annotations

from typing import Any

from tunewright.storage import S3Storage, Storage, open_storage
from tunewright_operator.kube import Kube


def s3_client(env: dict[str, str]) -> Any:
    """A boto3 client from AWS_* keys (as the trainer gets them via envFrom), with standard retries."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=env.get("AWS_SESSION_TOKEN"),
        region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=20),
    )


def open_root(kube: Kube, namespace: str, uri: str, secret_name: str | None) -> Storage:
    """The storage root; an s3:// root with a Secret uses the Secret's credentials, else the operator's own."""
    if uri.startswith("s3://") and secret_name:
        return S3Storage(uri, s3_client(kube.secret_data(namespace, secret_name)))
    return open_storage(uri)
