"""The Kopf handlers: each one only routes an event to the reconciler (the logic is in reconcile.py).

No handler needs a finalizer, and none is put on any object: owned pods, Services and ConfigMaps go with their
TrainingJob by ownerReference (Kubernetes' garbage collector), Adapters are meant to outlive it, and a job deleted
while the operator is down goes away at once. That is why progress is polled by one operator-wide loop over the
running jobs rather than a Kopf timer per job (a timer needs a finalizer on every unfinished job, and 1,000
timers cost 1,000 wake-ups per interval).

Work per event does not grow with the number of jobs: the queue reads Kopf indexes (queue.Indexed) in which
finished jobs and pods are only looked up or counted, the operator's own status writes and pod changes that do not
matter are not reconciled again, and storage is read for running jobs only.
"""

from __future__ import annotations

import contextvars
import logging
import socket
import threading
from typing import Any

import kopf
import prometheus_client

from tunewright_operator import datasets, metrics, queue
from tunewright_operator.kube import DATASETS, TRAININGJOBS, Kube
from tunewright_operator.models import GROUP, TERMINAL_PHASES, VERSION
from tunewright_operator.pods import LABEL_JOB, MANAGED_BY, owner_job
from tunewright_operator.podstate import unfinished
from tunewright_operator.reconcile import Reconciler
from tunewright_operator.settings import Settings

log = logging.getLogger("tunewright.operator")
TRAINER_PODS = {**MANAGED_BY, LABEL_JOB: kopf.PRESENT}
HANDLER_THREADS = 16


def post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message[:1024])


def register(settings: Settings, kube: Kube) -> Reconciler:
    """Register the handlers in Kopf's default registry; returns the reconciler they drive."""
    state = queue.Indexed()
    rec = Reconciler(kube, settings, post_event, state)
    tj = (GROUP, VERSION, TRAININGJOBS)
    stop = threading.Event()
    started = threading.Lock()

    def attach(indexes: dict[str, Any]) -> None:
        """Every handler: the indexes are populated once one runs; the first call starts the poll loop in its
        context (kopf.event() needs Kopf's context variables, set only for handlers of watched objects)."""
        with started:
            if not state.ready.is_set():
                state.attach(indexes)
                context = contextvars.copy_context()
                threading.Thread(target=context.run, args=(poll_loop,), name="poll", daemon=True).start()

    poll_pass = metrics.counted("poll")(rec.poll_running)

    def poll_loop() -> None:
        while not stop.wait(settings.poll_seconds):
            try:
                poll_pass()
            except Exception as err:  # the next pass retries
                log.warning("poll failed: %s", err)

    # The queue's inputs (queue.Indexed). An object whose function returns {} leaves that index: finished jobs and
    # pods are kept only where they are looked up by key, so a queue decision never iterates over them.
    @kopf.index(*tj, id="trainingjob_index")
    def trainingjob_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[queue.Key, Any]:
        return {} if queue.is_finished(body) else {(namespace, name): queue.summary(body)}

    @kopf.index(*tj, id="trainingjob_phase_index")
    def trainingjob_phase_index(body: kopf.Body, **_: Any) -> dict[str, None]:
        return {queue.phase(body): None}

    @kopf.index("v1", "pods", labels=TRAINER_PODS, id="unfinished_pod_index")
    def unfinished_pod_index(namespace: str, meta: kopf.Meta, body: kopf.Body, **_: Any) -> dict[queue.Key, str]:
        job = owner_job(dict(meta))
        return {(namespace, job): meta["uid"]} if job and unfinished(dict(body)) else {}

    @kopf.index("v1", "pods", labels=TRAINER_PODS, id="finished_pod_index")
    def finished_pod_index(namespace: str, name: str, meta: kopf.Meta, body: kopf.Body, **_: Any
                           ) -> dict[queue.Key, tuple[str, str]]:
        return {} if unfinished(dict(body)) else {(namespace, name): (body["status"]["phase"], meta["uid"])}

    @kopf.on.startup()
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.INFO  # our explicit events (log lines are not posted)
        settings.posting.reporting_component = "tunewright-operator"  # Events' source (kubectl describe: From)
        settings.posting.reporting_instance = socket.gethostname()  # the operator's pod
        settings.posting.event_name_prefix = "tunewright-"
        # No CRD or namespace watching: the chart installs the CRDs and names the namespaces, and grants neither
        # (with it on, Kopf retries the forbidden watches for ~40 s before it handles anything).
        settings.scanning.disabled = True
        settings.watching.server_timeout = 600
        # The handlers mostly wait on the API server and storage; Python's default pool (cores + 4 threads) left
        # admissions queued behind other jobs' requests in a 100-job burst on 2 cores.
        settings.execution.max_workers = HANDLER_THREADS
        settings.networking.request_timeout = 60
        if rec.settings.metrics_port:
            prometheus_client.start_http_server(rec.settings.metrics_port)

    @kopf.on.cleanup()
    def cleanup(**_: Any) -> None:
        stop.set()

    @kopf.on.event(*tj)
    @metrics.counted("trainingjob")
    def trainingjob_event(type: str | None, namespace: str, name: str, body: kopf.Body, **kwargs: Any) -> None:
        attach(kwargs)
        if type == "DELETED":
            kube.forget(TRAININGJOBS, namespace, name)
            rec.kick()  # its slot is free once its pods are gone (the pod events kick again then)
        elif type == "MODIFIED" and kube.wrote(TRAININGJOBS, namespace, name, body["metadata"].get("resourceVersion")):
            # The echo of this process's own status write: nothing new to act on, except that a job's end now
            # shows in the index (Kopf updates it before the handlers), so its slot can go to the next job; the
            # kick right after the write still saw it running.
            if (body.get("status") or {}).get("phase") in TERMINAL_PHASES:
                rec.kick()
        elif (body.get("status") or {}).get("phase") == "Succeeded":
            return  # nothing left to do; its slot was handed on when it finished
        else:
            rec.reconcile(namespace, name)

    @kopf.on.event("v1", "pods", labels=TRAINER_PODS)
    @metrics.counted("pod")
    def pod_event(type: str | None, namespace: str, meta: kopf.Meta, body: kopf.Body, **kwargs: Any) -> None:
        attach(kwargs)
        pod = dict(body)
        job = owner_job(dict(meta))
        if not job or not state.changed(pod, gone=type == "DELETED") or type is None:
            return  # nothing the reconciler acts on changed (or the initial listing: the job's own resync covers it)
        phase = (body.get("status") or {}).get("phase")
        if phase == "Succeeded":
            rec.kick()  # its slot is free (queue.holds_slot): the next job starts before this one's completion
        rec.reconcile(namespace, job)
        if type == "DELETED" or phase == "Failed":
            rec.kick()  # a slot may have come free (also when the job is gone, which reconcile does not see)

    @kopf.on.event(GROUP, VERSION, DATASETS)
    @metrics.counted("dataset")
    def dataset_event(type: str | None, body: kopf.Body, **kwargs: Any) -> None:
        attach(kwargs)
        if type != "DELETED":
            datasets.refresh(kube, dict(body))

    return rec
