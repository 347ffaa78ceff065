"""The Kopf handlers: each one only routes an event to the reconciler (the logic is in reconcile.py).

No handler needs a finalizer: owned pods, Services and ConfigMaps go with their TrainingJob by ownerReference
(Kubernetes' garbage collector), and Adapters are meant to outlive it.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import kopf
import prometheus_client

from tunewright_operator import datasets, metrics
from tunewright_operator.kube import DATASETS, TRAININGJOBS, Kube
from tunewright_operator.models import GROUP, TERMINAL_PHASES, VERSION
from tunewright_operator.pods import LABEL_JOB, MANAGED_BY, owner_job
from tunewright_operator.reconcile import Reconciler
from tunewright_operator.settings import Settings


def post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message[:1024])


def register(settings: Settings, kube: Kube) -> Reconciler:
    """Register the handlers in Kopf's default registry; returns the reconciler they drive."""
    rec = Reconciler(kube, settings, post_event)
    tj = (GROUP, VERSION, TRAININGJOBS)

    @kopf.on.startup()
    def startup(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
        settings.posting.level = logging.INFO  # our explicit events (log lines are not posted)
        settings.posting.reporting_component = "tunewright-operator"  # Events' source (kubectl describe: From)
        settings.posting.reporting_instance = socket.gethostname()  # the operator's pod
        settings.posting.event_name_prefix = "tunewright-"
        # No CRD or namespace watching: the chart installs the CRDs and names the namespaces, and grants neither
        # (with it on, Kopf retries the forbidden watches for ~40 s before it handles anything).
        settings.scanning.disabled = True
        settings.watching.server_timeout = 600
        settings.networking.request_timeout = 60
        if rec.settings.metrics_port:
            prometheus_client.start_http_server(rec.settings.metrics_port)
        try:
            rec.kick()  # fills the gauges and starts what the queue allows, even if no event comes
        except Exception as err:  # the watch events will retry; the operator must still start
            logger.warning(f"initial queue check failed: {err}")

    @kopf.on.event(*tj)
    @metrics.counted("trainingjob")
    def trainingjob_event(type: str | None, namespace: str, name: str, **_: Any) -> None:
        if type == "DELETED":
            rec.kick()  # its slot is free
        else:
            rec.reconcile(namespace, name)

    @kopf.on.event("v1", "pods", labels={**MANAGED_BY, LABEL_JOB: kopf.PRESENT})
    @metrics.counted("pod")
    def pod_event(namespace: str, meta: kopf.Meta, **_: Any) -> None:
        job = owner_job(dict(meta))
        if job:
            rec.reconcile(namespace, job)

    @kopf.timer(*tj, interval=settings.poll_seconds, when=lambda status, **_: status.get("phase") not in
                TERMINAL_PHASES)
    @metrics.counted("poll")
    def poll(namespace: str, name: str, **_: Any) -> None:
        rec.poll(namespace, name)

    @kopf.on.event(GROUP, VERSION, DATASETS)
    @metrics.counted("dataset")
    def dataset_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        if type != "DELETED":
            datasets.refresh(kube, dict(body))

    return rec
