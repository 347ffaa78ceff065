"""The Adapter custom resource, made from the registry record the trainer wrote."""

from __future__ import annotations

from typing import Any

from tunewright.registry import AdapterRecord
from tunewright_operator.kube import ADAPTERS, Kube
from tunewright_operator.models import API_VERSION
from tunewright_operator.pods import LABEL_JOB, MANAGED_BY, job_label


def adapter_name(record: AdapterRecord) -> str:
    """Deterministic from the registry (one name per adapter version), so creation is idempotent."""
    return f"{record.name}-v{record.version}"


def adapter_body(record: AdapterRecord, job: str) -> dict[str, Any]:
    # No ownerReference: Adapters outlive the TrainingJob that made them.
    return {
        "apiVersion": API_VERSION, "kind": "Adapter",
        "metadata": {"name": adapter_name(record),
                     "labels": {**MANAGED_BY, LABEL_JOB: job_label(job), "tunewright.dev/adapter": record.name,
                                "tunewright.dev/version": str(record.version)}},
        "spec": record.to_dict(),
    }


def ensure_adapter(kube: Kube, namespace: str, record: AdapterRecord, job: str) -> dict[str, Any]:
    """Create the Adapter (or find the one an earlier operator run created) and mark it Ready."""
    adapter = kube.ensure(ADAPTERS, namespace, adapter_body(record, job))
    if (adapter.get("status") or {}).get("phase") != "Ready":
        kube.patch_status(ADAPTERS, namespace, adapter_name(record),
                          {"phase": "Ready", "message": f"PEFT adapter at {record.uri}"})
    return adapter
