"""Dataset resources: their status mirrors the stored dataset's meta.json."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from tunewright.data.store import META, DatasetMeta
from tunewright_operator import stores
from tunewright_operator.kube import DATASETS, Kube


def read_status(kube: Kube, namespace: str, uri: str, secret_name: str | None) -> dict[str, Any]:
    """The status of the dataset directory at `uri`, read with the S3 credentials in `secret_name` (if any).
    Storage failures (credentials, access, reachability) are raised, not folded into the status."""
    try:
        root = stores.open_root(kube, namespace, uri, secret_name)
        meta = DatasetMeta.model_validate_json(root.read_bytes(META))
    except FileNotFoundError:
        return {"phase": "Invalid", "message": f"{uri} holds no dataset ({META} missing)"}
    except ValidationError as err:
        return {"phase": "Invalid", "message": f"{uri}/{META} is not a dataset record: {err.errors()[0]['msg']}"}
    return {"phase": "Ready", "message": f"dataset {meta.id} at {uri}", "kind": meta.kind, "modality": meta.modality,
            "samples": meta.samples, "digest": meta.digest, "created": meta.created}


def refresh(kube: Kube, dataset: dict[str, Any]) -> None:
    spec = dataset.get("spec") or {}
    status = read_status(kube, dataset["metadata"]["namespace"], spec.get("uri", ""), spec.get("secretName"))
    current = dataset.get("status") or {}
    if any(current.get(k) != v for k, v in status.items()):
        kube.patch_status(DATASETS, dataset["metadata"]["namespace"], dataset["metadata"]["name"], status)
