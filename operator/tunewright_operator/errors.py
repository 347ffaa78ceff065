"""What went wrong while reconciling a job, as a condition reason and one line for its status and Events.

An API or storage failure is never only a log line: the reconciler records it on the job (condition Synced,
False, with the reason below), posts a Warning Event and tries again at the next event or poll.
"""

from __future__ import annotations

import json

from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from kubernetes.client import ApiException

from tunewright_operator.kube import OwnedByAnother, SecretNotAllowed


def describe(err: Exception) -> tuple[str, str]:
    """(reason, message) of a failure; reason is CamelCase as condition reasons are."""
    if isinstance(err, ApiException):
        return _api(err)
    if isinstance(err, OwnedByAnother | SecretNotAllowed):
        return type(err).__name__, str(err)
    if isinstance(err, NoCredentialsError):
        return "StorageCredentialsMissing", "no S3 credentials: set spec.storage.secretName (or the Dataset's " \
                                            "spec.secretName) to a Secret with AWS_ACCESS_KEY_ID and " \
                                            "AWS_SECRET_ACCESS_KEY"
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        code = str(error.get("Code", ""))
        reason = "StorageAccessDenied" if code in ("403", "AccessDenied", "InvalidAccessKeyId",
                                                   "SignatureDoesNotMatch") else "StorageError"
        return reason, f"S3 {err.operation_name}: {code} {error.get('Message', '')}".strip()
    if isinstance(err, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError):
        return "StorageUnreachable", str(err)
    if isinstance(err, OSError):
        return "StorageError", f"{type(err).__name__}: {err}"
    return "InternalError", f"{type(err).__name__}: {err}"


def _api(err: ApiException) -> tuple[str, str]:
    try:
        body = json.loads(err.body or "{}")
    except ValueError:
        body = {}
    message = body.get("message") or f"{err.status} {err.reason}"
    details = body.get("details") or {}
    if err.status == 404 and details.get("kind") == "secrets":
        return "SecretNotFound", f'Secret "{details.get("name")}" not found (named by spec.storage.secretName or ' \
                                 "a Dataset's spec.secretName)"
    return f"Kubernetes{body.get('reason') or 'Error'}", message
