"""The Adapter custom resource, made from the registry record the trainer wrote."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from tunewright.registry import AdapterRecord
from tunewright_operator.kube import ADAPTERS, Kube
from tunewright_operator.models import API_VERSION
from tunewright_operator.pods import LABEL_JOB, MANAGED_BY, job_label


def adapter_name(record: AdapterRecord, taken: bool = False) -> str:
    """Deterministic from the registry (one name per adapter version), so creation is idempotent. When that
    name is taken by another run's Adapter (same adapter name and version in another storage root), the run
    id's hash is appended: never a reference to another job's artifact."""
    name = f"{record.name}-v{record.version}"
    return f"{name}-{hashlib.sha256(record.run_id.encode()).hexdigest()[:8]}" if taken else name


def adapter_body(record: AdapterRecord, job: str, taken: bool = False) -> dict[str, Any]:
    # No ownerReference: Adapters outlive the TrainingJob that made them.
    return {
        "apiVersion": API_VERSION, "kind": "Adapter",
        "metadata": {"name": adapter_name(record, taken),
                     "labels": {**MANAGED_BY, LABEL_JOB: job_label(job), "tunewright.dev/adapter": record.name,
                                "tunewright.dev/version": str(record.version)}},
        "spec": record.to_dict(),
    }


def ensure_adapter(kube: Kube, namespace: str, record: AdapterRecord, job: str,
                   emit: Callable[[str, str], None]) -> dict[str, Any]:
    """Create the Adapter (or find the one an earlier operator run created for this run) and mark it Ready;
    `emit(reason, message)` posts a Warning when the usual name belongs to another run."""
    adapter = kube.ensure(ADAPTERS, namespace, adapter_body(record, job))
    if (adapter.get("spec") or {}).get("runId") != record.run_id:
        emit("AdapterNameTaken", f"Adapter {adapter['metadata']['name']} belongs to run "
             f"{adapter['spec'].get('runId')} ({adapter['spec'].get('uri')}); this run's is "
             f"{adapter_name(record, taken=True)}")
        adapter = kube.ensure(ADAPTERS, namespace, adapter_body(record, job, taken=True))
    if (adapter.get("status") or {}).get("phase") != "Ready":
        kube.patch_status(ADAPTERS, namespace, adapter["metadata"]["name"],
                          {"phase": "Ready", "message": f"PEFT adapter at {record.uri}"})
    return adapter
