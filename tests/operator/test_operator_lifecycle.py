"""TrainingJob lifecycles end to end with the stand-in trainer (same contract as tunewright-train, no torch):
the real operator in a subprocess under the chart's RBAC, a real kube-apiserver + etcd + controller-manager,
pods run by the test kubelet."""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import subprocess
import time
from typing import Any

import kubernetes
import pytest
import yaml

from support.k8s import wait_for
from support.s3 import aws_env
from tunewright.data import synthetic
from tunewright.data.store import DatasetStore
from tunewright.runs import RunStore
from tunewright.storage import open_storage
from tunewright.training.checkpoints import CheckpointStore

SPEC: dict[str, Any] = {"dataset": {"id": "songs"}, "training": {"maxSteps": 12}, "checkpointing": {"everySteps": 4}}


def report(store: Any, status: dict[str, Any]) -> dict[str, Any]:
    return RunStore(store, status["runId"]).read_report() or {}


def reached(store: Any, k8s: Any, name: str, step: int) -> None:
    """Wait until the trainer's own progress.json (not the status, which lags by a poll) is at `step`."""
    run = RunStore(store, wait_for(lambda: k8s.status(name).get("runId"), 20, "the run id"))
    wait_for(lambda: (p := run.read_progress()) is not None and p.step >= step, 20, f"step {step}", interval=0.02)


def test_invalid_specs_are_refused_by_the_api_or_fail_with_a_clear_message_and_an_event(k8s, operator_factory,
                                                                                      kubelet_factory):
    kubelet_factory()
    operator_factory()
    with pytest.raises(kubernetes.client.ApiException) as refused:  # the CRD's schema, at the API server
        k8s.create("trainingjobs", "bad-lr", {**SPEC, "training": {"learningRate": 0}})
    assert refused.value.status == 422
    assert "spec.training.learningRate: Invalid value: 0: spec.training.learningRate in body should be greater " \
           "than 0" in refused.value.body
    k8s.create("trainingjobs", "no-data", {**SPEC, "dataset": {"id": "nope"}})  # valid until the store is read
    missing = k8s.wait_phase("no-data", "Failed", timeout=20)
    assert "dataset 'nope' not found" in missing["message"] and "known: songs" in missing["message"]
    assert [c["reason"] for c in missing["conditions"] if c["type"] == "Failed"] == ["InvalidSpec"]
    events = wait_for(lambda: [e for e in k8s.events("no-data") if e["reason"] == "InvalidSpec"], 10, "an Event")
    assert events[0]["type"] == "Warning" and "nope" in events[0]["message"]
    assert k8s.pods() == []


def test_trainer_errors_are_retried_from_the_checkpoint_until_retries_are_spent(store, k8s, operator_factory,
                                                                              kubelet_factory):
    kubelet_factory(STANDIN_FAIL_AT="6", STANDIN_FAIL_TIMES="flaky=1,broken=99")
    operator_factory("--max-concurrent-jobs", "2")
    k8s.create("trainingjobs", "flaky", {**SPEC, "retries": 1})
    k8s.create("trainingjobs", "broken", {**SPEC, "retries": 1, "name": "broken", "training": {"maxSteps": 40}})
    flaky = k8s.wait_phase("flaky", "Succeeded", timeout=30)
    assert (flaky["attempts"], flaky["failures"]) == (2, 1)
    assert report(store, flaky)["resumedFrom"] == "checkpoint-4"  # failed at step 6, resumed from step 4
    failed_cond = next(c for c in flaky["conditions"] if c["type"] == "PodFailed")
    assert failed_cond["reason"] == "TrainerError" and "stand-in failure at step 6" in failed_cond["message"]

    broken = k8s.wait_phase("broken", "Failed", timeout=30)
    assert broken["failures"] == 2 and broken["attempts"] == 2
    assert re.search(r"attempt 2 failed \(TrainerError: exit code 1; RuntimeError: stand-in failure at step 6\); "
                     r"all 1 retries spent", broken["message"]), broken["message"]
    assert sorted(k8s.pod_names()) == ["broken-a1", "broken-a2", "flaky-a1", "flaky-a2"]
    assert {e["reason"] for e in k8s.events("broken")} >= {"Retrying", "Failed"}


def test_evictions_and_preemptions_are_told_apart_from_errors(store, k8s, operator_factory, kubelet_factory):
    kubelet = kubelet_factory(STANDIN_STEP_SECONDS="0.1")
    operator_factory()
    k8s.create("trainingjobs", "spot", {**SPEC, "training": {"maxSteps": 30}})
    reached(store, k8s, "spot", 5)
    kubelet.evict("spot-a1")
    wait_for(lambda: k8s.status("spot").get("podName") == "spot-a2", 20, "attempt 2")
    cond = next(c for c in k8s.status("spot")["conditions"] if c["type"] == "PodFailed")
    assert cond["reason"] == "Evicted" and "disrupted" in cond["message"] and "low on resource" in cond["message"]
    wait_for(lambda: "spot-a2" in kubelet.pods, 20, "attempt 2 to start")
    reached(store, k8s, "spot", 12)
    kubelet.preempt("spot-a2")
    wait_for(lambda: k8s.status("spot").get("podName") == "spot-a3", 20, "attempt 3")
    cond = next(c for c in k8s.status("spot")["conditions"] if c["type"] == "PodFailed")
    assert cond["reason"] == "PreemptionByScheduler" and "attempt 2 disrupted" in cond["message"]
    done = k8s.wait_phase("spot", "Succeeded", timeout=30)
    assert done["attempts"] == 3
    assert report(store, done)["resumedFrom"] not in (None, "checkpoint-0")


def test_concurrency_limit_and_queue_order(k8s, operator_factory, kubelet_factory):
    kubelet = kubelet_factory(STANDIN_STEP_SECONDS="0.05")
    short = {**SPEC, "training": {"maxSteps": 4}}
    k8s.create("trainingjobs", "z-first", {**short, "name": "z-first"})
    time.sleep(1.1)  # creationTimestamp has one-second resolution
    k8s.create("trainingjobs", "a-second", {**short, "name": "a-second"})
    k8s.create("trainingjobs", "m-urgent", {**short, "name": "m-urgent", "priority": 5})
    operator_factory("--max-concurrent-jobs", "1")
    queued = wait_for(lambda: k8s.status("a-second").get("phase") == "Queued" and k8s.status("a-second"), 20,
                      "a-second queued")
    assert queued["message"].startswith("waiting for a free slot")
    assert next(c for c in queued["conditions"] if c["type"] == "Admitted")["reason"] == "WaitingForSlot"
    for name in ("m-urgent", "z-first", "a-second"):
        k8s.wait_phase(name, "Succeeded", timeout=30)
    assert kubelet.started == ["m-urgent-a1", "z-first-a1", "a-second-a1"]
    assert kubelet.max_parallel() == 1


def test_operator_restarts_lose_and_duplicate_nothing(store, k8s, operator_factory, kubelet_factory):
    kubelet = kubelet_factory(STANDIN_STEP_SECONDS="0.1")
    op = operator_factory()
    k8s.create("trainingjobs", "job", {**SPEC, "training": {"maxSteps": 30}})
    reached(store, k8s, "job", 2)
    kubelet.kill("job-a1", signal.SIGSTOP)  # (the test holds the trainer whenever timing matters)
    op.restart()  # killed mid-job: SIGKILL, then a new process
    wait_for(lambda: k8s.status("job").get("step", 0) >= 2, 20, "progress seen by the new operator")
    op.stop()  # away while the pod finishes
    kubelet.kill("job-a1", signal.SIGCONT)
    wait_for(lambda: kubelet.pods["job-a1"].exited(), 20, "the pod to finish")
    assert k8s.phase("job") == "Running"
    op.start()
    done = k8s.wait_phase("job", "Succeeded", timeout=20)
    assert k8s.pod_names() == ["job-a1"]
    assert [a["metadata"]["name"] for a in k8s.list("adapters")] == ["songs-sft-v1"]

    # A crash after the Adapter was created but before the status said so: the next run must find it.
    k8s.custom.patch_namespaced_custom_object_status(
        "tunewright.dev", "v1alpha1", k8s.namespace, "trainingjobs", "job",
        {"status": {"phase": "Running", "adapterRef": None, "completionTime": None}})
    op.restart()  # SIGKILL, then start
    again = k8s.wait_phase("job", "Succeeded", timeout=20)
    assert again["adapterRef"] == done["adapterRef"]
    assert [a["metadata"]["name"] for a in k8s.list("adapters")] == ["songs-sft-v1"]
    assert k8s.pod_names() == ["job-a1"] and kubelet.started == ["job-a1"]
    assert op.starts == 4


def test_a_lost_status_write_neither_duplicates_the_pod_nor_breaks_the_limit(store, k8s, operator_factory,
                                                                             kubelet_factory):
    kubelet = kubelet_factory(STANDIN_STEP_SECONDS="0.1")
    op = operator_factory("--max-concurrent-jobs", "1")
    k8s.create("trainingjobs", "job", {**SPEC, "name": "job", "training": {"maxSteps": 20}})
    reached(store, k8s, "job", 1)
    kubelet.kill("job-a1", signal.SIGSTOP)
    op.stop(signal.SIGKILL)
    # As if the operator had died between creating the pod and writing the status:
    k8s.custom.patch_namespaced_custom_object_status(
        "tunewright.dev", "v1alpha1", k8s.namespace, "trainingjobs", "job",
        {"status": {k: None for k in ("phase", "podName", "attempts", "runId", "startTime", "conditions", "message")}})
    k8s.create("trainingjobs", "urgent", {**SPEC, "name": "urgent", "priority": 10})
    op.start()
    kubelet.kill("job-a1", signal.SIGCONT)
    for name in ("job", "urgent"):
        k8s.wait_phase(name, "Succeeded", timeout=30)
    assert kubelet.started == ["job-a1", "urgent-a1"] and kubelet.max_parallel() == 1
    assert k8s.status("job")["attempts"] == 1


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or [] if c["type"] == type_)


def false_condition(k8s: Any, name: str, type_: str = "Synced") -> dict[str, Any] | None:
    """The job's condition of that type while it is False (e.g. Synced: its last reconcile failed), else None."""
    found = [c for c in k8s.status(name).get("conditions") or [] if c["type"] == type_]
    return found[0] if found and found[0]["status"] == "False" else None


def test_suspend_checkpoints_and_resume_waits_for_the_old_pod(store, k8s, operator_factory, kubelet_factory,
                                                              pod_events):
    kubelet = kubelet_factory(STANDIN_STEP_SECONDS="0.1", STANDIN_SIGTERM_SECONDS="1")  # a slow final upload
    operator_factory()
    k8s.create("trainingjobs", "pausable", {**SPEC, "training": {"maxSteps": 30}, "checkpointing": {"everySteps": 10}})
    reached(store, k8s, "pausable", 13)
    kubelet.kill("pausable-a1", signal.SIGSTOP)  # hold the trainer: the deleted pod stays terminating meanwhile
    k8s.patch_spec("trainingjobs", "pausable", {"suspend": True})
    wait_for(lambda: kubelet.pods["pausable-a1"].sigterm_sent, 20, "SIGTERM to the deleted pod")
    assert k8s.pods()[0]["metadata"]["deletionTimestamp"]
    paused = k8s.wait_phase("pausable", "Queued", timeout=10)
    assert "podName" not in paused and condition(paused, "Suspended")["status"] == "True"

    # Resumed while the old pod still commits its checkpoint: the next attempt waits until the pod is gone.
    k8s.patch_spec("trainingjobs", "pausable", {"suspend": False})
    waiting = wait_for(lambda: (s := k8s.status("pausable")).get("terminating") and s, 10, "the wait")
    assert waiting["phase"] == "Running" and "podName" not in waiting and waiting["terminating"] == ["pausable-a1"]
    gone = condition(waiting, "PreviousAttemptGone")
    assert (gone["status"], gone["reason"]) == ("False", "WaitingForPreviousAttempt")
    assert "attempt 2 waits for pod pausable-a1" in waiting["message"]
    time.sleep(1.5)  # three polls
    assert k8s.pod_names() == ["pausable-a1"]
    kubelet.kill("pausable-a1", signal.SIGCONT)  # the kubelet's SIGTERM is waiting for it

    done = k8s.wait_phase("pausable", "Succeeded", timeout=30)
    assert kubelet.pods["pausable-a1"].proc.returncode == 143  # SIGTERM → checkpoint → 143
    assert pod_events.first("DELETED", "pausable-a1") < pod_events.first("ADDED", "pausable-a2")
    stopped = re.search(r"at step (\d+); checkpoint checkpoint-\1 committed",
                        kubelet.pods["pausable-a1"].termination_log.read_text())
    assert stopped and int(stopped[1]) >= 13
    assert report(store, done)["resumedFrom"] == f"checkpoint-{stopped[1]}"  # the SIGTERM checkpoint
    assert done["attempts"] == 2 and done.get("failures", 0) == 0 and "terminating" not in done
    assert condition(done, "Suspended")["status"] == "False"
    assert condition(done, "PreviousAttemptGone")["status"] == "True"


def test_a_pod_stuck_terminating_is_reported_and_holds_the_next_attempt_until_force_deleted(
        store, k8s, operator_factory, kubelet_factory, pod_events):
    kubelet = kubelet_factory(STANDIN_STEP_SECONDS="0.1")
    operator_factory("--grace-seconds", "1", "--termination-margin-seconds", "1")
    k8s.create("trainingjobs", "lost", {**SPEC, "training": {"maxSteps": 30}})
    reached(store, k8s, "lost", 6)
    kubelet.hold("lost-a1")  # its node stops answering ...
    k8s.core.delete_namespaced_pod("lost-a1", k8s.namespace)  # ... and the pod is deleted (e.g. evicted by taint)
    committed = CheckpointStore(RunStore(store, k8s.status("lost")["runId"]).checkpoints, keep_last=3,
                                background=False).latest()
    waiting = wait_for(lambda: (s := k8s.status("lost")).get("terminating") and s, 10, "the wait")
    assert waiting["message"].startswith("pod lost-a1 was deleted; attempt 2 waits for pod lost-a1")
    assert waiting["phase"] == "Running" and waiting.get("failures", 0) == 0

    def stuck() -> dict[str, Any] | None:
        found = condition(k8s.status("lost"), "PreviousAttemptGone")
        return found if found["reason"] == "PodsStuckTerminating" else None

    reported = wait_for(stuck, 10, "the stuck report")  # grace period 1 s + margin 1 s
    assert reported["status"] == "False" and "the node may be unreachable" in reported["message"]
    assert "kubectl delete pod --grace-period=0 --force lost-a1" in reported["message"]
    events = wait_for(lambda: [e for e in k8s.events("lost") if e["reason"] == "PodsStuckTerminating"], 10, "Event")
    assert len(events) == 1 and events[0]["type"] == "Warning"
    time.sleep(1)  # still waiting: the operator never force-deletes by itself
    assert k8s.pod_names() == ["lost-a1"] and k8s.status("lost")["terminating"] == ["lost-a1"]

    kubelet.force_delete("lost-a1")  # what a cluster admin does once the node is known to be gone
    done = k8s.wait_phase("lost", "Succeeded", timeout=30)
    assert pod_events.first("DELETED", "lost-a1") < pod_events.first("ADDED", "lost-a2")
    assert (done["attempts"], done.get("failures", 0)) == (2, 0)
    assert report(store, done)["resumedFrom"] == (committed.name if committed else None)
    assert condition(done, "PreviousAttemptGone")["reason"] == "PodsGone"


def test_delete_removes_owned_objects_and_keeps_adapters(store, k8s, operator_factory, kubelet_factory):
    kubelet = kubelet_factory(STANDIN_STEP_SECONDS="0.2")
    operator_factory("--max-concurrent-jobs", "2")
    k8s.create("trainingjobs", "finished", {**SPEC, "name": "finished"})
    k8s.create("trainingjobs", "running", {**SPEC, "name": "running", "training": {"maxSteps": 200}})
    k8s.wait_phase("finished", "Succeeded", timeout=30)
    wait_for(lambda: k8s.status("running").get("step", 0) >= 2, 20, "progress")
    config_maps = lambda: {c.metadata.name for c in k8s.core.list_namespaced_config_map(  # noqa: E731
        k8s.namespace, label_selector="app.kubernetes.io/managed-by=tunewright-operator").items}
    owned = {p["metadata"]["name"] for p in k8s.pods()} | config_maps()
    assert owned == {"finished-a1", "running-a1", "finished-config", "running-config"}
    k8s.delete("trainingjobs", "running")
    k8s.delete("trainingjobs", "finished")
    wait_for(lambda: k8s.get("trainingjobs", "running") is None, 20, "deletion (Kopf's timer finalizer released)")
    wait_for(lambda: not k8s.pods(), 20, "owned pods to go (the garbage collector)")
    wait_for(lambda: not config_maps(), 20, "owned ConfigMaps to go")
    wait_for(lambda: kubelet.pods["running-a1"].exited(), 20, "the trainer to get SIGTERM")
    assert kubelet.pods["running-a1"].proc.returncode == 143
    assert [a["metadata"]["name"] for a in k8s.list("adapters")] == ["finished-v1"]


def test_a_job_created_again_under_its_name_waits_for_the_old_jobs_pod(store, k8s, operator_factory, kubelet_factory,
                                                                       pod_events):
    kubelet = kubelet_factory(STANDIN_STEP_SECONDS="0.1")
    operator_factory()
    old = k8s.create("trainingjobs", "again", {**SPEC, "training": {"maxSteps": 200}})
    reached(store, k8s, "again", 2)
    kubelet.kill("again-a1", signal.SIGSTOP)  # the old trainer holds its pod in Terminating
    k8s.delete("trainingjobs", "again")
    wait_for(lambda: k8s.get("trainingjobs", "again") is None, 20, "the old TrainingJob gone")
    new = k8s.create("trainingjobs", "again", {**SPEC, "training": {"maxSteps": 4}})

    waiting = wait_for(lambda: (s := k8s.status("again")).get("terminating") and s, 10, "the wait")
    assert waiting["terminating"] == ["again-a1"] and "podName" not in waiting
    (pod,) = k8s.pods()
    assert pod["metadata"]["ownerReferences"][0]["uid"] == old["metadata"]["uid"]  # the old one's, not adopted
    kubelet.kill("again-a1", signal.SIGCONT)

    done = k8s.wait_phase("again", "Succeeded", timeout=30)
    assert kubelet.pods["again-a1"].uid != pod["metadata"]["uid"] and kubelet.started == ["again-a1", "again-a1"]
    assert [e for e in pod_events.events if e[1] == "again-a1" and e[0] != "MODIFIED"][:3] == \
        [("ADDED", "again-a1"), ("DELETED", "again-a1"), ("ADDED", "again-a1")]
    assert done["runId"].endswith(new["metadata"]["uid"].replace("-", "")[:8]) and done["attempts"] == 1
    assert report(store, done)["steps"] == 4


def test_dataset_resources_and_operator_metrics(store, k8s, operator_factory, kubelet_factory):
    kubelet_factory()
    op = operator_factory()
    k8s.create("datasets", "catalog", {"uri": store.child("datasets", "songs").uri})
    k8s.create("datasets", "ghost", {"uri": store.child("datasets", "missing").uri})
    ready = wait_for(lambda: (k8s.get("datasets", "catalog") or {}).get("status"), 20, "Dataset status")
    meta = json.loads(store.read_text("datasets/songs/meta.json"))
    assert ready["phase"] == "Ready"
    assert (ready["kind"], ready["samples"], ready["digest"]) == ("rated", meta["samples"], meta["digest"])
    ghost = wait_for(lambda: (k8s.get("datasets", "ghost") or {}).get("status"), 20, "Dataset status")
    assert ghost["phase"] == "Invalid" and "meta.json missing" in ghost["message"]

    k8s.create("trainingjobs", "from-catalog", {**SPEC, "dataset": {"id": "catalog"}})
    done = k8s.wait_phase("from-catalog", "Succeeded", timeout=30)
    assert done["adapterRef"]["name"] == "catalog-sft-v1"  # the adapter is named after the id, not the URI
    config = k8s.core.read_namespaced_config_map("from-catalog-config", k8s.namespace).data["config.yaml"]
    assert store.child("datasets", "songs").uri in config

    text = op.metrics()
    assert 'tunewright_operator_jobs{phase="Succeeded"} 1.0' in text or \
        wait_for(lambda: 'tunewright_operator_jobs{phase="Succeeded"} 1.0' in op.metrics(), 10, "jobs gauge")
    assert 'tunewright_operator_job_duration_seconds_count{method="sft",outcome="succeeded"} 1.0' in op.metrics()
    assert "tunewright_operator_queue_depth 0.0" in op.metrics()
    assert "tunewright_operator_reconcile_errors_total" in op.metrics()


def test_kubectl_apply_get_explain_delete(control_plane, k8s, operator_factory, kubelet_factory, tmp_path):
    """What a user types, with the kubectl built from the pinned Kubernetes release."""
    kubelet_factory()
    operator_factory()

    def kubectl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return control_plane.kubectl("-n", k8s.namespace, *args, check=check)

    def manifest(name: str, spec: dict[str, Any]) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"apiVersion": "tunewright.dev/v1alpha1", "kind": "TrainingJob",
                                        "metadata": {"name": name}, "spec": spec}))
        return str(path)

    bad = kubectl("apply", "-f", manifest("bad", {**SPEC, "training": {"learningRate": 2, "maxSteps": 0}}),
                  check=False)
    print(f"kubectl apply of an invalid TrainingJob: exit {bad.returncode}\n{bad.stderr}")
    assert bad.returncode == 1 and 'The TrainingJob "bad" is invalid' in bad.stderr
    assert "spec.training.learningRate: Invalid value: 2: spec.training.learningRate in body should be less " \
           "than or equal to 1" in bad.stderr
    assert "spec.training.maxSteps: Invalid value: 0" in bad.stderr

    assert "trainingjob.tunewright.dev/applied created" in kubectl("apply", "-f", manifest("applied", SPEC)).stdout
    k8s.wait_phase("applied", "Succeeded", timeout=30)
    table = kubectl("get", "tj").stdout.splitlines()
    print("\n".join(table))
    assert table[0].split() == ["NAME", "PHASE", "METHOD", "STEPS", "LOSS", "AGE"]
    assert table[1].split()[:4] == ["applied", "Succeeded", "sft", "12/12"]
    wide = kubectl("get", "tj", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-3:] == ["LOSS", "ADAPTER", "AGE"] and "songs-sft-v1" in wide[1]
    assert yaml.safe_load(kubectl("get", "trainingjob", "applied", "-o", "yaml").stdout)["status"]["phase"] == \
        "Succeeded"
    assert "songs-sft-v1" in kubectl("get", "adapters").stdout
    explained = kubectl("explain", "trainingjob.spec.training.learningRate").stdout
    print(explained)
    assert "FIELD: learningRate <number>" in explained and "Peak learning rate" in explained

    assert "deleted" in kubectl("delete", "trainingjob", "applied", "--wait=false").stdout
    wait_for(lambda: k8s.get("trainingjobs", "applied") is None, 20, "deletion")
    assert "songs-sft-v1" in kubectl("get", "adapters").stdout


def test_any_valid_name_works_however_long(k8s, operator_factory, kubelet_factory):
    """A 77-character name with dots: label values, pod, ConfigMap and Service names stay within their limits
    (the API server refuses any that do not)."""
    kubelet_factory(STANDIN_STEP_SECONDS="0.05")
    operator_factory()
    name = f"{'a' * 30}.songs.{'b' * 40}"
    k8s.create("trainingjobs", name, {**SPEC, "resources": {"nodes": 2}})
    done = k8s.wait_phase(name, "Succeeded", timeout=40)
    assert done["attempts"] == 1 and done["adapterRef"]["name"] == "songs-sft-v1"
    for pod in k8s.pods():
        assert pod["metadata"]["ownerReferences"][0]["name"] == name
        assert all(len(v) <= 63 for v in pod["metadata"]["labels"].values())


def test_an_error_shows_on_its_job_and_never_blocks_the_queue(k8s, operator_factory, kubelet_factory):
    """A job whose storage Secret is missing: the error is on the job (Synced=False with the reason, a Warning
    Event) and retried; the valid job behind it in the queue runs meanwhile. Creating the Secret heals it."""
    kubelet_factory(STANDIN_STEP_SECONDS="0.05")
    operator_factory("--max-concurrent-jobs", "1")
    k8s.create("trainingjobs", "broken", {**SPEC, "priority": 10,
                                          "storage": {"uri": "s3://nowhere/x", "secretName": "missing"}})
    k8s.create("trainingjobs", "fine", {**SPEC, "name": "fine"})

    error = wait_for(lambda: false_condition(k8s, "broken"), 20, "the error on the job")
    assert error["reason"] == "SecretNotFound" and 'Secret "missing" not found' in error["message"]
    assert k8s.phase("broken") == "Pending"
    events = wait_for(lambda: [e for e in k8s.events("broken") if e["reason"] == "SecretNotFound"], 10, "Event")
    assert events[0]["type"] == "Warning" and events[0]["source"]["component"] == "tunewright-operator"
    k8s.wait_phase("fine", "Succeeded", timeout=30)
    assert false_condition(k8s, "broken") is not None and k8s.pod_names() == ["fine-a1"]


def test_a_dataset_resource_is_read_with_the_credentials_it_names(k8s, s3_root, moto_endpoint, tmp_path,
                                                                   operator_factory, kubelet_factory):
    """The operator has no AWS credentials of its own: it reads a Dataset on S3 with the Secret the Dataset
    names, passes that Secret to the trainer (prefixed, beside the job's own storage Secret), and a Dataset
    whose Secret is missing shows on the job."""
    DatasetStore(open_storage(s3_root)).import_file(
        "songs", synthetic.write_jsonl(synthetic.rated_rows(), tmp_path / "songs.jsonl"), "rated")
    secret = {k: base64.b64encode(v.encode()).decode() for k, v in aws_env(moto_endpoint).items()}
    k8s.core.create_namespaced_secret(k8s.namespace, {"metadata": {"name": "data-creds", "labels": {
        "tunewright.dev/storage-credentials": "true"}}, "data": secret})
    uri = f"{s3_root}/datasets/songs"
    k8s.create("datasets", "catalog", {"uri": uri, "secretName": "data-creds"})
    k8s.create("datasets", "locked", {"uri": uri, "secretName": "gone"})
    kubelet_factory()
    operator_factory()
    k8s.create("trainingjobs", "reads", {**SPEC, "dataset": {"id": "catalog"}})
    k8s.create("trainingjobs", "cannot", {**SPEC, "dataset": {"id": "locked"}})

    done = k8s.wait_phase("reads", "Succeeded", timeout=30)
    assert done["adapterRef"]["name"] == "catalog-sft-v1"
    (pod,) = [p for p in k8s.pods() if p["metadata"]["name"] == "reads-a1"]
    assert {"prefix": "TUNEWRIGHT_DATASET_", "secretRef": {"name": "data-creds"}} in \
        pod["spec"]["containers"][0]["envFrom"]

    error = wait_for(lambda: false_condition(k8s, "cannot"), 20, "the Dataset's missing Secret on the job")
    assert error["reason"] == "SecretNotFound" and '"gone"' in error["message"]


def test_an_adapter_resource_is_reused_only_for_the_same_run(store, k8s, operator_factory, kubelet_factory,
                                                            tmp_path):
    """Two jobs train adapter `dup` into different storage roots: both registries say version 1, but each job's
    adapterRef names an Adapter that points at its own artifact."""
    other = open_storage(f"file://{tmp_path}/other")
    DatasetStore(other).import_file("songs", synthetic.write_jsonl(synthetic.rated_rows(), tmp_path / "s.jsonl"),
                                    "rated")
    kubelet_factory()
    operator_factory()
    k8s.create("trainingjobs", "first", {**SPEC, "name": "dup"})
    first = k8s.wait_phase("first", "Succeeded", timeout=30)
    k8s.create("trainingjobs", "second", {**SPEC, "name": "dup", "storage": {"uri": other.uri}})
    second = k8s.wait_phase("second", "Succeeded", timeout=30)
    assert first["adapterRef"]["name"] == "dup-v1" and second["adapterRef"]["name"] != "dup-v1"
    for status, root in ((first, store), (second, other)):
        adapter = k8s.get("adapters", status["adapterRef"]["name"])
        assert adapter["spec"]["runId"] == status["runId"] and adapter["spec"]["uri"].startswith(root.uri)
    events = [e for e in k8s.events("second") if e["reason"] == "AdapterNameTaken"]
    assert events and "dup-v1" in events[0]["message"]


def test_a_config_map_of_another_owner_is_never_taken_as_the_jobs_own(k8s, operator_factory, kubelet_factory):
    kubelet_factory()
    operator_factory()
    decoy = k8s.create("trainingjobs", "decoy", {**SPEC, "suspend": True})
    owner = {"apiVersion": "tunewright.dev/v1alpha1", "kind": "TrainingJob", "name": "decoy",
             "uid": decoy["metadata"]["uid"], "controller": True}
    k8s.core.create_namespaced_config_map(k8s.namespace, {"metadata": {
        "name": "squat-config", "ownerReferences": [owner]}, "data": {"config.yaml": "{}"}})
    k8s.create("trainingjobs", "squat", SPEC)

    error = wait_for(lambda: false_condition(k8s, "squat"), 20, "the conflict on the job")
    assert error["reason"] == "OwnedByAnother" and "ConfigMap squat-config belongs to another owner" in \
        error["message"]
    assert k8s.pods() == []
    k8s.core.delete_namespaced_config_map("squat-config", k8s.namespace)
    k8s.wait_phase("squat", "Succeeded", timeout=40)
    data = k8s.core.read_namespaced_config_map("squat-config", k8s.namespace)
    assert data.metadata.owner_references[0].name == "squat"


def test_two_operator_processes_never_both_act(store, k8s, operator_factory, kubelet_factory, pod_events):
    """Two operators for one namespace (an evicted pod overlapping its replacement): one holds the Lease and
    acts, the other waits; when the first dies the second takes over after the lease expires."""
    kubelet = kubelet_factory(STANDIN_STEP_SECONDS="0.1")
    first = operator_factory()
    second = operator_factory()
    k8s.create("trainingjobs", "solo", {**SPEC, "training": {"maxSteps": 200}})
    reached(store, k8s, "solo", 3)
    lease = kubernetes.client.CoordinationV1Api(k8s.api).read_namespaced_lease("tunewright-operator", k8s.namespace)
    assert lease.spec.holder_identity == f"{socket.gethostname()}_{first.proc.pid}"
    assert "waiting for the lease" in second.log()
    first.stop(signal.SIGKILL)
    kubelet.kill("solo-a1", signal.SIGKILL)  # a failure only the new leader can act on
    done = k8s.wait_phase("solo", "Running", timeout=40) and wait_for(
        lambda: k8s.status("solo").get("podName") == "solo-a2", 60, "the new leader to start attempt 2")
    assert done and [e for e in pod_events.events if e[0] == "ADDED"] == [("ADDED", "solo-a1"), ("ADDED", "solo-a2")]
    assert k8s.status("solo")["failures"] == 1


def test_pods_that_cannot_start_show_why_and_fail_the_attempt_in_time(k8s, operator_factory, kubelet_factory):
    """An image that cannot be pulled and a nodeSelector no node has: condition Running=False with the kubelet's
    or scheduler's reason and a Warning Event (not 'Running'); after --pending-timeout-seconds the attempt fails."""
    kubelet_factory(node={"unpullable": ("registry.example/missing:1",)})
    operator_factory("--max-concurrent-jobs", "2", "--pending-timeout-seconds", "8", "--allowed-images",
                     '["ghcr.io/tunewright/*", "registry.example/*"]')
    k8s.create("trainingjobs", "nopull", {**SPEC, "image": "registry.example/missing:1", "retries": 0})
    k8s.create("trainingjobs", "nofit", {**SPEC, "retries": 0, "resources": {"nodeSelector": {"pool": "h100"}}})
    cases = (("nopull", "ErrImagePull", 'failed to pull image "registry.example/missing:1"'),
             ("nofit", "Unschedulable", "didn't match Pod's node affinity/selector"))
    for name, reason, words in cases:  # both while they wait (a finished job's Running says Failed)
        waiting = wait_for(lambda n=name: (c := false_condition(k8s, n, "Running")) and c["reason"] != "PodsPending"
                           and c, 20, f"{name} waiting")
        assert waiting["reason"] == reason and words in waiting["message"]
    for name, reason, _ in cases:
        assert wait_for(lambda n=name, r=reason: [e for e in k8s.events(n) if e["reason"] == r], 10, "Event")
        failed = k8s.wait_phase(name, "Failed", timeout=30)
        assert failed["message"].startswith(f"attempt 1 failed ({reason}: ") and "not running after" in \
            failed["message"]
    wait_for(lambda: not k8s.pods(), 20, "the stuck pods deleted")


def test_only_allowed_images_and_opted_in_secrets_are_used(k8s, operator_factory, kubelet_factory):
    """Whoever may create a TrainingJob must not get any image run, nor any Secret of the namespace as env."""
    kubelet_factory()
    operator_factory()
    k8s.create("trainingjobs", "miner", {**SPEC, "image": "docker.io/evil/miner:1"})
    refused = k8s.wait_phase("miner", "Failed", timeout=20)
    assert [c["reason"] for c in refused["conditions"] if c["type"] == "Failed"] == ["ImageNotAllowed"]
    assert "docker.io/evil/miner:1" in refused["message"] and "trainer.allowedImages" in refused["message"]

    k8s.core.create_namespaced_secret(k8s.namespace, {"metadata": {"name": "db-password"},
                                                      "stringData": {"PASSWORD": "hunter2"}})
    k8s.create("trainingjobs", "leak", {**SPEC, "storage": {"secretName": "db-password"}})

    error = wait_for(lambda: false_condition(k8s, "leak"), 20, "the refusal")
    assert error["reason"] == "SecretNotAllowed" and "tunewright.dev/storage-credentials=true" in error["message"]
    assert k8s.pods() == []
    k8s.core.patch_namespaced_secret("db-password", k8s.namespace,
                                     {"metadata": {"labels": {"tunewright.dev/storage-credentials": "true"}}})
    k8s.wait_phase("leak", "Succeeded", timeout=90)  # (Secret reads are cached for a minute at most)


def test_conditions_follow_the_api_conventions(k8s, operator_factory, kubelet_factory):
    """One condition per type (a list-map the API server enforces), each with a reason, a transition time and
    the generation it was set for; Admitted turns False once the job is finished or suspended."""
    kubelet_factory()
    operator_factory()
    k8s.create("trainingjobs", "conv", SPEC)
    k8s.create("trainingjobs", "paused", {**SPEC, "suspend": True})
    done = k8s.wait_phase("conv", "Succeeded", timeout=30)
    types = [c["type"] for c in done["conditions"]]
    assert len(types) == len(set(types)) and {"Admitted", "Running", "Succeeded"} <= set(types)
    for cond in done["conditions"]:
        assert cond["reason"] and cond["lastTransitionTime"] and cond["observedGeneration"] == 1, cond
    for held in ("Admitted", "Running"):
        assert (condition(done, held)["status"], condition(done, held)["reason"]) == ("False", "Succeeded")
    reasons = wait_for(lambda: {e["reason"] for e in k8s.events("conv")} >= {"AttemptStarted", "Succeeded"} and
                       [(e["reason"], e["source"]["component"]) for e in k8s.events("conv")], 10, "the Events")
    assert {component for _, component in reasons} == {"tunewright-operator"}
    paused = k8s.wait_phase("paused", "Queued", timeout=20)
    assert (condition(paused, "Admitted")["status"], condition(paused, "Admitted")["reason"]) == ("False",
                                                                                                  "Suspended")
    twice = {"type": "Synced", "status": "True", "reason": "X", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    with pytest.raises(kubernetes.client.ApiException) as refused:
        k8s.custom.patch_namespaced_custom_object_status("tunewright.dev", "v1alpha1", k8s.namespace,
                                                         "trainingjobs", "conv",
                                                         {"status": {"conditions": [twice, twice]}})
    assert refused.value.status == 422 and "Duplicate value" in refused.value.body
