"""The queue on a real API server: a slot is held until the job's pods are gone, a deleted job goes away without
the operator, and the operator's work per event does not grow with the number of waiting jobs."""

from __future__ import annotations

import time
from typing import Any

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
