"""The queue on a real API server: a slot is held until the job's pods are gone, a deleted job goes away without
the operator, and the operator's work per event does not grow with the number of waiting jobs."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes

from support.k8s import wait_for

SPEC: dict[str, Any] = {"dataset": {"id": "songs"}, "training": {"maxSteps": 12}, "checkpointing": {"everySteps": 4}}


def test_a_deleted_running_job_holds_its_slot_until_its_pod_is_gone(k8s, operator_factory, kubelet_factory):
    # The trainer takes 3 s to commit its checkpoint on SIGTERM: the deleted job's pod terminates meanwhile.
    kubelet = kubelet_factory(STANDIN_STEP_SECONDS="0.1", STANDIN_SIGTERM_SECONDS="3")
    operator_factory("--max-concurrent-jobs", "1")
    k8s.create("trainingjobs", "first", {**SPEC, "name": "first", "training": {"maxSteps": 500}})
    # (training, so its SIGTERM handler is in place: a trainer killed while it starts exits -15, not 143)
    wait_for(lambda: k8s.status("first").get("step", 0) >= 1, 30, "the first job's trainer at work")
    k8s.create("trainingjobs", "second", {**SPEC, "name": "second"})
    k8s.wait_phase("second", "Queued", timeout=20)
    k8s.delete("trainingjobs", "first")
    # (the garbage collector deletes the pod; it may take up to its 30 s resync to watch a CRD created just now)
    k8s.wait_phase("second", "Succeeded", timeout=90)
    first, second = kubelet.pods["first-a1"], kubelet.pods["second-a1"]
    assert first.proc.returncode == 143 and first.exited_at is not None  # SIGTERM → checkpoint → exit
    assert second.started_at >= first.exited_at, "the next job started while the deleted job's trainer ran"
    assert kubelet.max_parallel() == 1


def test_a_job_deleted_while_the_operator_is_down_goes_away_with_its_pod(k8s, operator_factory, kubelet_factory):
    kubelet = kubelet_factory(STANDIN_STEP_SECONDS="0.1")
    op = operator_factory()
    k8s.create("trainingjobs", "orphaned", {**SPEC, "training": {"maxSteps": 500}})
    wait_for(lambda: k8s.status("orphaned").get("step", 0) >= 2, 20, "progress in the status (polled)")
    assert not k8s.get("trainingjobs", "orphaned")["metadata"].get("finalizers")  # nothing waits for the operator
    op.stop()
    k8s.delete("trainingjobs", "orphaned")
    wait_for(lambda: k8s.get("trainingjobs", "orphaned") is None, 15, "the TrainingJob gone without the operator")
    wait_for(lambda: not k8s.pods(), 90, "its pod garbage-collected")
    assert kubelet.pods["orphaned-a1"].proc.returncode == 143  # it got SIGTERM and checkpointed


def operator_requests(control_plane: Any, before: Any) -> dict[tuple[str, str, str], int]:
    after = control_plane.request_counts()
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def test_waiting_jobs_cost_no_requests_while_nothing_changes(control_plane, k8s, operator_factory, kubelet_factory):
    """Each poll (0.5 s here) touches only the running job; the twelve waiting ones are not read, listed or
    written again until a slot frees."""
    kubelet_factory(STANDIN_STEP_SECONDS="0.2")
    operator_factory("--max-concurrent-jobs", "1")
    k8s.create("trainingjobs", "running", {**SPEC, "name": "running", "training": {"maxSteps": 500}})
    wait_for(lambda: k8s.phase("running") == "Running", 20, "the running job")
    waiting = [f"waiting-{i}" for i in range(12)]
    for name in waiting:
        k8s.create("trainingjobs", name, {**SPEC, "name": name})
    for name in waiting:
        k8s.wait_phase(name, "Queued", timeout=30)
    time.sleep(1)  # the last events settle
    before = control_plane.request_counts()
    time.sleep(3)  # six polls; the test itself calls nothing meanwhile
    spent = operator_requests(control_plane, before)
    print(f"API requests in 3 s with 1 running and 12 waiting jobs: {spent}")
    on_jobs = {k: v for k, v in spent.items() if k[1] == "trainingjobs"}
    # (the API server's counts include kube-controller-manager's: its garbage collector relists resources now
    # and then, so only what the operator itself would list is checked)
    assert not [k for k in spent if k[0] == "LIST" and k[1] in ("trainingjobs", "datasets", "secrets")], spent
    # per poll (6 to 9 in the window, with the metrics reads): the running job's GET and, as its step moved, a
    # status PATCH; nothing for the waiting jobs (each of their polls read the job, listed every job and pod,
    # and read storage before: hundreds of requests here)
    assert sum(on_jobs.values()) <= 2 * 10, on_jobs
    assert k8s.status("running")["step"] > 0 and all(k8s.phase(n) == "Queued" for n in waiting)


class JobEvents:
    """The namespace's TrainingJob watch events as (name, phase, podName), in the order the API server sent them
    (one stream: the order in which the writes were stored)."""

    def __init__(self, api: Any, namespace: str):
        self.events: list[tuple[str, str | None, str | None]] = []
        self._watch = kubernetes.watch.Watch()
        custom = kubernetes.client.CustomObjectsApi(api)
        stream = self._watch.stream(custom.list_namespaced_custom_object, "tunewright.dev", "v1alpha1", namespace,
                                    "trainingjobs", deserialize=False)
        threading.Thread(target=self._follow, args=(stream,), daemon=True).start()

    def _follow(self, stream: Any) -> None:
        try:
            for event in stream:
                tj = event["object"]
                status = tj.get("status") or {}
                self.events.append((tj["metadata"]["name"], status.get("phase"), status.get("podName")))
        except Exception:  # the stream ended with the test
            pass

    def first(self, name: str, phase: str | None = None, pod: str | None = None) -> int:
        found = [i for i, (n, ph, p) in enumerate(self.events)
                 if n == name and (phase is None or ph == phase) and (pod is None or p == pod)]
        assert found, f"no event of {name} with phase {phase} pod {pod}: {self.events}"
        return found[0]

    def stop(self) -> None:
        self._watch.stop()


def test_a_slot_frees_when_the_pod_succeeds_before_the_job_is_published(api, namespace, k8s, operator_factory,
                                                                         kubelet_factory):
    """A trainer pod that has Succeeded holds no GPU: the next job starts before the finished job's completion
    (reading its result, creating its Adapter, its final status), and never beside a running trainer."""
    kubelet = kubelet_factory(STANDIN_STEP_SECONDS="0.1")
    jobs = JobEvents(api, namespace)
    try:
        # (a long poll interval: only the pod's Succeeded event drives the completion and the next start)
        operator_factory("--max-concurrent-jobs", "1", "--poll-seconds", "60")
        k8s.create("trainingjobs", "first", {**SPEC, "name": "first"})
        k8s.wait_phase("first", "Running", timeout=20)
        k8s.create("trainingjobs", "second", {**SPEC, "name": "second"})
        k8s.wait_phase("second", "Queued", timeout=20)
        k8s.wait_phase("first", "Succeeded", timeout=60)
        k8s.wait_phase("second", "Succeeded", timeout=60)
    finally:
        jobs.stop()
    # the second job's start is stored before the first job's Succeeded status
    assert jobs.first("second", "Running", "second-a1") < jobs.first("first", "Succeeded"), jobs.events
    assert kubelet.max_parallel() == 1  # the second trainer started after the first one exited
    assert sorted(kubelet.pods) == ["first-a1", "second-a1"]
    made = sorted(a["metadata"]["labels"]["tunewright.dev/trainingjob"] for a in k8s.list("adapters"))
    assert made == ["first", "second"]
    assert k8s.status("first")["adapterRef"] and k8s.status("second")["attempts"] == 1


def test_a_retry_after_a_pod_succeeded_without_a_result_waits_for_a_slot(k8s, operator_factory, kubelet_factory,
                                                                         tmp_path):
    """The first attempt of `hollow` exits 0 without writing result.json: its pod Succeeded, so its slot went to
    the next job, and its retry queues for a slot instead of running beside that job."""
    once = ('if [ "$TUNEWRIGHT_TRAININGJOB" = hollow ] && mkdir "$HOLLOW_MARK" 2>/dev/null; then sleep 4; exit 0; '
            'fi; exec "$@"')
    standin = [sys.executable, str(Path(__file__).parent / "standin_trainer.py")]
    kubelet = kubelet_factory(["sh", "-c", once, "sh", *standin], HOLLOW_MARK=str(tmp_path / "hollow-once"),
                              STANDIN_STEP_SECONDS="0.1")
    operator_factory("--max-concurrent-jobs", "1")
    k8s.create("trainingjobs", "hollow", {**SPEC, "name": "hollow"})
    k8s.wait_phase("hollow", "Running", timeout=20)
    k8s.create("trainingjobs", "next", {**SPEC, "name": "next"})
    k8s.wait_phase("next", "Queued", timeout=20)
    k8s.wait_phase("next", "Succeeded", timeout=60)
    status = k8s.wait_phase("hollow", "Succeeded", timeout=60)
    assert (status["attempts"], status["failures"]) == (2, 1)
    assert "result.json is missing" in next(c for c in status["conditions"] if c["type"] == "PodFailed")["message"]
    assert kubelet.started == ["hollow-a1", "next-a1", "hollow-a2"]
    assert kubelet.max_parallel() == 1  # the retry waited for the slot `next` took
