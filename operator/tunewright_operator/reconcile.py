"""One TrainingJob's next step, decided from its stored status and what the API and storage show now.

Nothing lives only in memory: every decision is a function of (status, pod, storage), every side effect is
create-or-get / delete-if-present under a deterministic name, and the status patch comes after the creations.
Deleting the pods of a failed or lost attempt comes after the patch that records its end: once they are gone,
a failed attempt would look like a lost one and its failure would go uncounted. An operator restarted at any
point therefore replays the same step and ends in the same state, with no duplicates and nothing lost.

An attempt that ends while pods of it are still alive (a failed node's peers, a deleted pod, a suspend) first
records its end (podName unset, phase still Running: the job keeps its slot); the next attempt's pods are
created only once the earlier pods are gone from the API (handover.py says why and what counts).

The locks below only keep this process's worker threads from deciding for the same job (or the last free
slot) at the same time. The one thing held in memory, `_starting` (jobs chosen to start whose pods are being
created count as busy), lasts from the choice to the pod creation; a restart in between loses only the choice,
and the next kick makes it again from what the API shows.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tunewright.registry import Registry
from tunewright.runs import RunStore
from tunewright_operator import adapters, errors, handover, metrics, multinode, pods, queue, stores, validation
from tunewright_operator.kube import TRAININGJOBS, Kube
from tunewright_operator.models import TERMINAL_PHASES, TrainingJobSpec
from tunewright_operator.podstate import PodState, pod_state, terminating, unfinished
from tunewright_operator.settings import Settings
from tunewright_operator.status import (
    RUNNING,
    SYNCED,
    changed,
    condition,
    now,
    progress_fields,
    seconds_between,
    set_condition,
    stamped,
)

log = logging.getLogger("tunewright.operator")

# emit(body, type, reason, message): posts a Kubernetes Event about the object (kopf.event in the operator).
Emit = Callable[[dict[str, Any], str, str, str], None]


ADMIT_THREADS = 8  # jobs a kick starts at once: each start is ~8 requests, mostly waiting on the API server
PODS_PENDING = ("PodsPending", "waiting for the pods to start")  # condition Running's reason, message
_LOOKUP = object()  # _start's dataset argument when the caller has not read the Dataset resource


def _status(tj: dict[str, Any]) -> dict[str, Any]:
    return tj.get("status") or {}


def _pods_text(names: list[str]) -> str:
    return f"pod {names[0]}" if len(names) == 1 else f"pods {', '.join(names)}"


class Reconciler:
    def __init__(self, kube: Kube, settings: Settings, emit: Emit, state: queue.State | None = None):
        self.kube = kube
        self.settings = settings
        self.emit = emit
        self.state: queue.State = state or queue.Listed(
            lambda: kube.list(TRAININGJOBS, settings.namespaces),
            lambda: kube.list_pods(settings.namespaces, pods.SELECTOR))
        self._locks: defaultdict[queue.Key, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        self._admission = threading.Lock()  # guards the choice of jobs to start, and _starting
        self._starting: set[queue.Key] = set()  # jobs admitted whose pods are being created: they hold a slot
        self._admitting = ThreadPoolExecutor(ADMIT_THREADS, thread_name_prefix="admit")

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks[namespace, name]

    # --- entry points (called from the Kopf handlers) ---

    def reconcile(self, namespace: str, name: str) -> None:
        if self._reconcile_job(namespace, name):
            self.kick()

    def _reconcile_job(self, namespace: str, name: str) -> bool:
        """One job's next step; True when it gave up a slot."""
        with self._lock(namespace, name):
            tj = self.kube.get(TRAININGJOBS, namespace, name)
            return self._guarded(tj, self._reconcile) if tj is not None else False

    def _reconcile(self, tj: dict[str, Any]) -> bool:
        phase = _status(tj).get("phase")
        if phase == "Failed":
            self._stop_leftovers(tj)  # in case a restart came between the final status and the deletion
        if phase in TERMINAL_PHASES:
            return False
        if tj["metadata"].get("deletionTimestamp"):
            return False  # going away; its pods go with it (garbage collection by ownerReference)
        return self._step(tj)

    def poll(self, namespace: str, name: str) -> None:
        """Mirror a running job's progress.json into its status, then reconcile it (a missed pod event costs at
        most one poll). Only running jobs are polled: a waiting job's place changes by events, not by time."""
        with self._lock(namespace, name):
            tj = self.kube.get(TRAININGJOBS, namespace, name)
            if tj is None:
                return
            status = _status(tj)
            if status.get("phase") == "Running" and status.get("runId"):
                self._guarded(tj, self._mirror_progress)
            freed = self._guarded(tj, self._reconcile)
        if freed:
            self.kick()

    def poll_running(self) -> None:
        """One pass of the operator-wide poll loop: every running job (from the cache), then the queue."""
        for tj in self.state.jobs():
            if queue.is_active(tj) and not tj["metadata"].get("deletionTimestamp"):
                try:
                    self.poll(*queue.key(tj))
                except Exception as err:  # one job's storage or API trouble must not stop the others' polls
                    log.warning("poll of %s/%s failed: %s", *queue.key(tj), err)
        self.kick()

    def _mirror_progress(self, tj: dict[str, Any]) -> bool:
        spec = validation.parse_spec(tj.get("spec") or {})
        progress = RunStore(self._storage(tj, spec), _status(tj)["runId"]).read_progress()
        if progress is not None:
            self._write(tj, progress_fields(progress))
        return False

    def _guarded(self, tj: dict[str, Any], step: Callable[[dict[str, Any]], bool]) -> bool:
        """Run one step; an exception is recorded on the job (Synced=False, a Warning Event once per distinct
        message) instead of escaping, so the other jobs go on. The next event or poll retries."""
        try:
            freed = step(tj)
        except Exception as err:
            reason, message = errors.describe(err)
            log.warning("%s/%s: %s: %s", *queue.key(tj), reason, message)
            status = _status(tj)
            previous = condition(status, SYNCED)
            if previous is None or (previous["reason"], previous["message"]) != (reason, message):
                self.emit(tj, "Warning", reason, f"{message} (retrying)")
            self._write(tj, {"phase": status.get("phase") or "Pending", "conditions": set_condition(
                status.get("conditions"), SYNCED, False, reason, message)})
            return False
        if (previous := condition(_status(tj), SYNCED)) and previous["status"] == "False":
            self._write(tj, {"conditions": set_condition(_status(tj).get("conditions"), SYNCED, True, "Recovered",
                                                         f"recovered from {previous['reason']}")})
        return freed

    def kick(self) -> None:
        """Start whatever the queue allows (after a job finished, was suspended or deleted); no API request
        unless a job starts. The jobs chosen are claimed (in `_starting`) under the admission lock, so a kick in
        another thread picks the jobs behind them, and started side by side (ADMIT_THREADS). A job that fails to
        start does not stop the others."""
        while True:
            with self._admission:
                tjs, pods_now = self._cluster_state()
                chosen = queue.admissible(tjs, self.settings.max_concurrent_jobs, pods_now)
                self._starting.update(chosen)
            if not chosen:
                return
            # Each in a copy of this thread's context: kopf.event() needs Kopf's context variables.
            started = [self._admitting.submit(contextvars.copy_context().run, self._start_claimed, job)
                       for job in chosen]
            if not any(f.result() for f in started):  # another round only if one gave a slot back (invalid)
                return

    def _start_claimed(self, job: queue.Key) -> bool:
        try:
            return self._reconcile_job(*job)
        except Exception as err:
            log.warning("admitting %s/%s failed: %s", *job, err)
            return False
        finally:
            with self._admission:
                self._starting.discard(job)

    def _cluster_state(self) -> tuple[list[dict[str, Any]], queue.Pods]:
        """All TrainingJobs and what the trainer pods show, jobs being started counted as owners (the queue's
        inputs); updates gauges."""
        tjs, found = self.state.jobs(), self.state.pods()
        found.owners.update(self._starting)
        metrics.observe_phases(self.state.phases(), sum(map(queue.is_waiting, tjs)))
        return tjs, found

    # --- the state machine ---

    def _step(self, tj: dict[str, Any]) -> bool:
        """Advance one job; True when it gave up a slot (finished or suspended)."""
        status = _status(tj)
        try:
            spec = validation.parse_spec(tj.get("spec") or {})
            validation.check_image(spec, self.settings)
        except validation.InvalidJob as err:
            return self._invalid(tj, str(err), err.reason)
        state = self._attempt_state(tj, spec) if status.get("podName") else None
        if state and state.phase == "Succeeded":  # done, even if suspended meanwhile
            return self._complete(tj, spec)
        if spec.suspend:
            return self._suspend(tj)
        if state is None:
            if status.get("phase") == "Running":  # an attempt ended; the next one waits for its pods to go
                return self._start(tj, spec, int(status.get("attempts") or 0) + 1)
            return self._admit(tj, spec)
        if state.phase in ("Missing", "Terminating"):  # a pod was lost or deleted by someone else
            return self._start(tj, spec, int(status.get("attempts") or 0) + 1, note=f"{state.message}; ")
        if state.phase == "Failed":
            return self._failed(tj, spec, state)
        if state.phase in ("Pending", "Running"):
            return self._running(tj, spec, state)
        return False

    def _running(self, tj: dict[str, Any], spec: TrainingJobSpec, state: PodState) -> bool:
        """The attempt's pods run (condition Running: True) or wait (False: PodsPending, or what a person must
        fix: the kubelet's ErrImagePull, CreateContainerConfigError, ... or the scheduler's Unschedulable, also a
        Warning Event). Not running after --pending-timeout-seconds for such a reason fails the attempt."""
        status = _status(tj)
        previous = condition(status, RUNNING)
        if state.phase == "Running":
            conditions = set_condition(status.get("conditions"), RUNNING, True, "PodsRunning", status["podName"])
            self._write(tj, {"phase": "Running", "conditions": conditions})
            return False
        reason, message = state.reason or PODS_PENDING[0], state.message or PODS_PENDING[1]
        if state.reason and (previous is None or previous["reason"] != reason):
            self.emit(tj, "Warning", reason, f"{status['podName']}: {message}")
        since = previous["lastTransitionTime"] if previous and previous["status"] == "False" else now()
        waited = seconds_between(since, now()) or 0.0
        if state.reason and waited > self.settings.pending_timeout_seconds:
            return self._failed(tj, spec, PodState("Failed", reason, False, None,
                                                   f"{message} (not running after {waited:.0f} s)"))
        self._write(tj, {"phase": "Running", "conditions": set_condition(status.get("conditions"), RUNNING, False,
                                                                          reason, message)})
        return False

    def _attempt_state(self, tj: dict[str, Any], spec: TrainingJobSpec) -> PodState:
        """The current attempt's pod state; for several nodes, all its pods' together."""
        namespace, name = queue.key(tj)
        status = _status(tj)
        if spec.resources.nodes == 1:
            pod = self.kube.get_pod(namespace, status["podName"])
            if pod is None:
                return PodState("Missing", message=f"pod {status['podName']} disappeared")
            state = pod_state(pod)
            return PodState("Terminating", message=f"pod {status['podName']} was deleted") \
                if state.phase == "Terminating" else state
        attempt = int(status.get("attempts") or 1)
        found = {p["metadata"]["name"]: p
                 for p in self.kube.list_pods((namespace,), multinode.attempt_selector(tj, attempt))}
        names = multinode.pod_names(name, attempt, spec.resources.nodes)
        return multinode.attempt_state({n: found.get(n) for n in names})

    def _delete_attempt(self, tj: dict[str, Any]) -> list[str]:
        """Delete the current attempt's pods (all nodes) and its rendezvous Service; the pods' names."""
        status = _status(tj)
        if not status.get("podName"):
            return []
        namespace, name = queue.key(tj)
        attempt = int(status.get("attempts") or 1)
        names = sorted(p["metadata"]["name"]
                       for p in self.kube.list_pods((namespace,), multinode.attempt_selector(tj, attempt)))
        for pod in names:
            self.kube.delete_pod(namespace, pod)
        self.kube.delete_service(namespace, multinode.service_name(name, attempt))
        return names

    def _stop_leftovers(self, tj: dict[str, Any]) -> None:
        """Delete the job's pods that still run, e.g. the other nodes of a multi-node attempt that failed."""
        namespace, _ = queue.key(tj)
        self._delete_unless_terminating(namespace, [
            p for p in self.kube.list_pods((namespace,), multinode.job_selector(tj))
            if handover.owned_by(p, tj["metadata"]["uid"]) and unfinished(p)])

    def _delete_unless_terminating(self, namespace: str, found: list[dict[str, Any]]) -> None:
        for pod in found:
            if not terminating(pod):
                self.kube.delete_pod(namespace, pod["metadata"]["name"])

    def _invalid(self, tj: dict[str, Any], message: str, reason: str = "InvalidSpec") -> bool:
        self._delete_attempt(tj)
        self.emit(tj, "Warning", reason, message)
        self._finish(tj, "Failed", message, reason)
        return True

    def _suspend(self, tj: dict[str, Any]) -> bool:
        status, active = _status(tj), queue.is_active(tj)
        deleted = self._delete_attempt(tj)
        if deleted:
            self.emit(tj, "Normal", "Suspended", f"deleted {_pods_text(deleted)}; the trainer "
                      "checkpoints on SIGTERM and the next attempt resumes from there")
        suspended = condition(status, "Suspended")
        if status.get("phase") == "Queued" and suspended and suspended["status"] == "True":
            return False
        self._write(tj, {
            "phase": "Queued", "podName": None, "terminating": None,
            "message": "suspended; set spec.suspend to false to resume from the latest checkpoint",
            "conditions": set_condition(set_condition(status.get("conditions"), "Suspended", True, "Suspended",
                                                      "spec.suspend is true"),
                                        "Admitted", False, "Suspended", "suspended jobs hold no slot"),
        })
        return active

    def _admit(self, tj: dict[str, Any], spec: TrainingJobSpec) -> bool:
        """A waiting job: start it if the queue allows, else record its place. Only the choice is made under the
        admission lock (in memory, from the indexes); the job's slot is then held in `_starting` while its
        requests run outside it, so several jobs are admitted at once. A job started just before a restart lost
        the status write owns its running pod, so it is admitted at once, and the creations below get that pod
        (its config map); had the pod finished meanwhile, the job waits for a slot and then gets it the same way."""
        job = namespace, _ = queue.key(tj)
        attempt = int(_status(tj).get("attempts") or 0) + 1
        try:
            dataset = validation.dataset_resource(self.kube, namespace, spec)
            config = self._prepare(tj, spec, dataset)
        except validation.InvalidJob as err:
            return self._invalid(tj, str(err), err.reason)
        with self._admission:
            tjs, pods_now = self._cluster_state()
            # Its own earlier pods, still running or terminating (resumed right after a suspend), hold its slot.
            admitted = job in pods_now.owners or \
                job in queue.admissible(tjs, self.settings.max_concurrent_jobs, pods_now)
            if admitted:
                self._starting.add(job)
            else:
                place, running = queue.position(tjs, job), len(queue.busy(tjs, pods_now))
        if admitted:
            try:
                self.kube.ensure_config_map(namespace, pods.config_map(tj, config))
                return self._start(tj, spec, attempt, dataset=dataset)
            finally:
                with self._admission:
                    self._starting.discard(job)
        if _status(tj).get("phase") != "Queued":
            self.emit(tj, "Normal", "Queued", f"waiting for one of {self.settings.max_concurrent_jobs} slots")
        self._write(tj, {
            "phase": "Queued",
            "message": f"waiting for a free slot: {place} in the queue, {running} of "
                       f"{self.settings.max_concurrent_jobs} running",
            "conditions": set_condition(_status(tj).get("conditions"), "Admitted", False, "WaitingForSlot",
                                        f"maxConcurrentJobs is {self.settings.max_concurrent_jobs}"),
        })
        return False

    def _prepare(self, tj: dict[str, Any], spec: TrainingJobSpec, dataset: dict[str, Any] | None) -> Any:
        """Checks that need the cluster or storage (once, before the first start); `dataset`: the Dataset
        resource the spec names, if any."""
        namespace = tj["metadata"]["namespace"]
        for secret in {spec.storage.secret_name, validation.dataset_secret(spec, dataset)} - {None}:
            self.kube.secret_data(namespace, secret)  # exists and is opted in, before a pod gets it as env
        config = validation.trainer_config(spec, dataset)
        if not _status(tj).get("attempts"):
            validation.check_dataset(self.kube, namespace, config, self._storage(tj, spec),
                                     validation.dataset_secret(spec, dataset))
        return config

    def _start(self, tj: dict[str, Any], spec: TrainingJobSpec, attempt: int, note: str = "",
               extra: dict[str, Any] | None = None, dataset: object = _LOOKUP) -> bool:
        """Create attempt `attempt`'s pods (once earlier ones are gone) and record it; `dataset`: the Dataset
        resource when the caller has just read it."""
        meta, status = tj["metadata"], _status(tj)
        extra = extra or {}
        conditions = extra.get("conditions", status.get("conditions"))
        if condition(status, "Suspended"):
            conditions = set_condition(conditions, "Suspended", False, "Resumed", "spec.suspend is false")
        if self._previous_pods_remain(tj, attempt, note, {**extra, "conditions": conditions}):
            return False
        if attempt > 1:
            self.kube.delete_service(meta["namespace"], multinode.service_name(meta["name"], attempt - 1))
        run = status.get("runId") or pods.run_id(meta["namespace"], meta["name"], meta["uid"])
        uri = validation.storage_uri(spec, self.settings.storage)
        if dataset is _LOOKUP:
            dataset = validation.dataset_resource(self.kube, meta["namespace"], spec)
        assert dataset is None or isinstance(dataset, dict)
        members = multinode.pod_set(tj, spec, attempt, run, uri, self.settings,
                                    validation.dataset_secret(spec, dataset))
        if len(members) > 1:
            self.kube.ensure_service(meta["namespace"], multinode.rendezvous_service(tj, attempt))
        created = [self.kube.ensure_pod(meta["namespace"], member) for member in members]
        for pod in created:
            self.state.created(pod)  # busy at once, before the watch shows the pod
        names = [pod["metadata"]["name"] for pod in created]
        conditions = set_condition(handover.gone(conditions), "Admitted", True, "SlotAssigned", _pods_text(names))
        # What the new pods' first event would write (they are Pending): one status write instead of two.
        conditions = set_condition(conditions, RUNNING, False, *PODS_PENDING)
        resumed = "" if attempt == 1 else " (resumes from the latest checkpoint)"
        self.emit(tj, "Normal", "AttemptStarted", f"attempt {attempt}: {_pods_text(names)}{resumed}")
        self._write(tj, {
            **extra, "phase": "Running", "attempts": attempt, "podName": names[0], "runId": run, "terminating": None,
            "startTime": status.get("startTime") or now(), "conditions": conditions,
            "message": f"{note}attempt {attempt}: {_pods_text(names)}{resumed}",
        })
        return False

    def _previous_pods_remain(self, tj: dict[str, Any], attempt: int, note: str, extra: dict[str, Any]) -> bool:
        """Hold attempt `attempt` back while pods of earlier attempts remain: record the wait (with `extra`, e.g.
        the failure just counted) in the status, then delete any that still run (the other nodes of a failed
        or lost one would wait for it in a collective forever). True while it waits.

        The status is written before any deletion: a restart in between finds the failure counted and the
        attempt ended, and deletes them then; the other order would let it see only pods gone (Missing) and
        start the next attempt without counting the failure."""
        namespace, _ = queue.key(tj)
        remaining = handover.blocking(self.kube.list_pods((namespace,), multinode.job_selector(tj)), attempt,
                                      tj["metadata"]["uid"])
        if not remaining:
            return False
        names = [p["metadata"]["name"] for p in remaining]
        conditions, message, stuck = handover.waiting(extra["conditions"], names, attempt,
                                                      handover.grace_seconds(remaining),
                                                      self.settings.termination_margin_seconds)
        if stuck:
            self.emit(tj, "Warning", handover.STUCK, message)
        previous = _status(tj).get("message") or ""
        if not note and previous.endswith(message):
            message = previous  # keep what ended the attempt (the note of the first wait) in view
        self._write(tj, {**extra, "phase": "Running", "podName": None, "terminating": names,
                         "conditions": conditions, "message": f"{note}{message}"})
        self._delete_unless_terminating(namespace, remaining)
        return True

    def _failed(self, tj: dict[str, Any], spec: TrainingJobSpec, state: PodState, requeue: bool = False) -> bool:
        """Count a failed attempt: retry, or fail the job when its retries are spent. `requeue`: the attempt's pod
        Succeeded, so its slot has gone to the next job (queue.holds_slot) and the retry waits for a slot."""
        status = _status(tj)
        attempt, failures = int(status.get("attempts") or 1), int(status.get("failures") or 0) + 1
        what = f"attempt {attempt} {'disrupted' if state.disrupted else 'failed'} ({state.describe()})"
        extra = {"failures": failures, "conditions": set_condition(
            status.get("conditions"), "PodFailed", True, state.reason, what)}
        if failures > spec.retries:
            message = f"{what}; all {spec.retries} retries spent"
            self.emit(tj, "Warning", "Failed", message)
            self._finish(tj, "Failed", message, state.reason, extra)
            self._stop_leftovers(tj)  # after the status: a restart in between must not start another attempt
            return True
        self.emit(tj, "Warning", "Retrying", f"{what}; retry {failures} of {spec.retries}")
        if requeue:
            conditions = extra["conditions"]
            for held in ("Admitted", RUNNING):
                conditions = set_condition(conditions, held, False, "WaitingForSlot", "its retry waits for a slot")
            self._write(tj, {**extra, "phase": "Queued", "podName": None, "message": f"{what}; waiting for a slot",
                             "conditions": conditions})
            return True
        return self._start(tj, spec, attempt + 1, f"{what}; ", extra)

    def _complete(self, tj: dict[str, Any], spec: TrainingJobSpec) -> bool:
        namespace, name = queue.key(tj)
        root = self._storage(tj, spec)
        run = RunStore(root, _status(tj)["runId"])
        result = run.read_result()
        if result is None:
            return self._failed(tj, spec, PodState("Failed", "TrainerError", False, 0, f"the trainer exited 0 but "
                                                   f"{run.dir.uri}/result.json is missing"), requeue=True)
        record = Registry(root).get(result.adapter_name, result.adapter_version)
        adapter = adapters.ensure_adapter(self.kube, namespace, record, name,
                                          lambda reason, message: self.emit(tj, "Warning", reason, message))
        progress = run.read_progress()
        report = record.report
        message = f"adapter {record.name} version {record.version}: {record.uri}"
        self.emit(tj, "Normal", "Succeeded", message)
        self._finish(tj, "Succeeded", message, "AdapterCreated", {
            **(progress_fields(progress) if progress else {}),
            "metrics": {k: v for k, v in {"loss": report.final_loss, "evalLoss": report.best_eval_loss}.items()
                        if v is not None} or None,
            "adapterRef": {"name": adapter["metadata"]["name"], "adapter": record.name, "version": record.version},
        })
        return True

    def _finish(self, tj: dict[str, Any], phase: str, message: str, reason: str,
                extra: dict[str, Any] | None = None) -> None:
        status, extra = _status(tj), extra or {}
        done = now()
        duration = seconds_between(status.get("startTime"), done)
        if duration is not None:
            method = (tj.get("spec") or {}).get("method", "sft")
            metrics.JOB_DURATION.labels(method=method, outcome=phase.lower()).observe(duration)
        conditions = set_condition(extra.get("conditions", status.get("conditions")), phase, True, reason, message)
        for held in ("Admitted", RUNNING):  # a finished job holds no slot and runs nothing
            if condition({"conditions": conditions}, held):
                conditions = set_condition(conditions, held, False, phase, "the job is finished")
        self._write(tj, {**extra, "phase": phase, "message": message, "completionTime": done,
                         "conditions": conditions})

    # --- helpers ---

    def _storage(self, tj: dict[str, Any], spec: TrainingJobSpec) -> Any:
        uri = validation.storage_uri(spec, self.settings.storage)
        return stores.open_root(self.kube, tj["metadata"]["namespace"], uri, spec.storage.secret_name)

    def _write(self, tj: dict[str, Any], patch: dict[str, Any]) -> None:
        status, generation = _status(tj), tj["metadata"].get("generation")
        if patch.get("conditions") is not None:
            patch = {**patch, "conditions": stamped(patch["conditions"], status.get("conditions"), generation)}
        patch = changed(status, {**patch, "observedGeneration": generation})
        if set(patch) - {"observedGeneration"}:
            namespace, name = queue.key(tj)
            self.kube.patch_status(TRAININGJOBS, namespace, name, patch)
            tj["status"] = {k: v for k, v in {**status, **patch}.items() if v is not None}
            if "phase" in patch:
                log.info("%s/%s: %s (%s)", namespace, name, patch["phase"], patch.get("message", ""))
