"""A multi-node TrainingJob end to end with the stand-in trainer: one pod per node plus a headless Service per
attempt, all owned by the job; the attempt succeeds when every pod does and fails as a whole when one does; the
next attempt starts only when every pod of the failed one is gone."""

from __future__ import annotations

import re
import signal
import time
from typing import Any

from support.k8s import wait_for
from tunewright.runs import RunStore

SPEC: dict[str, Any] = {"dataset": {"id": "songs"}, "resources": {"nodes": 2}, "training": {"maxSteps": 30},
                        "checkpointing": {"everySteps": 4}}


def env(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"] if "value" in e}


def services(k8s: Any) -> list[str]:
    return sorted(s.metadata.name for s in k8s.core.list_namespaced_service(k8s.namespace).items)


def test_one_node_failing_fails_the_attempt_and_every_node_is_restarted_together(store, k8s, operator_factory,
                                                                                  kubelet_factory):
    kubelet = kubelet_factory(STANDIN_STEP_SECONDS="0.1")
    operator_factory()
    uid = k8s.create("trainingjobs", "wide", SPEC)["metadata"]["uid"]
    wait_for(lambda: {"wide-a1-0", "wide-a1-1"} <= set(kubelet.pods), 40, "both nodes of attempt 1 to start")
    assert k8s.status("wide")["podName"] == "wide-a1-0"
    assert services(k8s) == ["wide-a1"]
    service = k8s.core.read_namespaced_service("wide-a1", k8s.namespace)
    assert service.spec.cluster_ip == "None" and [o.uid for o in service.metadata.owner_references] == [uid]
    for rank, pod in enumerate(sorted(k8s.pods(), key=lambda p: p["metadata"]["name"])):
        assert [o["uid"] for o in pod["metadata"]["ownerReferences"]] == [uid]
        assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == (f"node-{rank}", "wide-a1")
        e = env(pod)
        assert (e["TUNEWRIGHT_NODE_RANK"], e["TUNEWRIGHT_MASTER_ADDR"], e["TUNEWRIGHT_MASTER_PORT"]) == (
            str(rank), f"node-0.wide-a1.{k8s.namespace}.svc", "29500")

    run = RunStore(store, k8s.status("wide")["runId"])
    wait_for(lambda: (p := run.read_progress()) is not None and p.step >= 6, 20, "step 6", interval=0.02)
    kubelet.kill("wide-a1-1")  # node 1 dies: node 0 alone cannot go on
    wait_for(lambda: k8s.status("wide").get("podName") == "wide-a2-0", 20, "attempt 2")
    failed = next(c for c in k8s.status("wide")["conditions"] if c["type"] == "PodFailed")
    assert failed["reason"] == "TrainerError" and "attempt 1 failed" in failed["message"]
    assert "pod wide-a1-1" in failed["message"]
    wait_for(lambda: kubelet.pods["wide-a1-0"].exited(), 20, "node 0 of attempt 1 to be stopped")
    assert kubelet.pods["wide-a1-0"].proc.returncode == 143  # deleted: SIGTERM → checkpoint → 143

    # Suspending removes every node's pod and the Service; resuming starts all nodes again.
    wait_for(lambda: {"wide-a2-0", "wide-a2-1"} <= set(kubelet.pods), 20, "both nodes of attempt 2 to start")
    k8s.patch_spec("trainingjobs", "wide", {"suspend": True})
    # (attempt 1's failed pod stays, like a single node's, for its logs; it holds nothing)
    wait_for(lambda: k8s.pod_names() == ["wide-a1-1"] and not services(k8s), 20, "attempt 2's pods and Service to go")
    assert k8s.wait_phase("wide", "Queued", timeout=10).get("podName") is None
    k8s.patch_spec("trainingjobs", "wide", {"suspend": False})

    done = k8s.wait_phase("wide", "Succeeded", timeout=30)
    assert (done["attempts"], done["failures"]) == (3, 1)
    assert k8s.pod_names() == ["wide-a1-1", "wide-a3-0", "wide-a3-1"] and services(k8s) == ["wide-a3"]
    assert all(kubelet.pods[p].proc.returncode == 0 for p in ("wide-a3-0", "wide-a3-1"))
    assert (run.read_report() or {})["resumedFrom"] not in (None, "checkpoint-0")
    assert [a["metadata"]["name"] for a in k8s.list("adapters")] == ["songs-sft-v1"]


def test_the_next_attempt_waits_for_the_last_ones_pods_to_go_even_across_an_operator_restart(
        store, k8s, operator_factory, kubelet_factory, pod_events):
    kubelet = kubelet_factory(STANDIN_STEP_SECONDS="0.1", STANDIN_SIGTERM_SECONDS="0.5")  # a slow final upload
    op = operator_factory()
    k8s.create("trainingjobs", "wide", {**SPEC, "checkpointing": {"everySteps": 20}})
    run = RunStore(store, wait_for(lambda: k8s.status("wide").get("runId"), 20, "the run id"))
    wait_for(lambda: (p := run.read_progress()) is not None and p.step >= 6, 20, "step 6", interval=0.02)
    kubelet.kill("wide-a1-0", signal.SIGSTOP)  # node 0 will be slow to stop: the SIGTERM waits for it
    kubelet.kill("wide-a1-1")  # node 1 dies: the attempt fails, node 0 is deleted
    wait_for(lambda: kubelet.pods["wide-a1-0"].sigterm_sent, 20, "SIGTERM to node 0")
    # Node 1's pod failed and stays for its logs (it holds nothing); node 0's stays while its trainer is stopped.
    waiting = wait_for(lambda: (s := k8s.status("wide")).get("terminating") == ["wide-a1-0"] and s, 10, "the wait")
    assert (waiting["phase"], waiting["attempts"], waiting["failures"]) == ("Running", 1, 1)
    assert "podName" not in waiting and k8s.pod_names() == ["wide-a1-0", "wide-a1-1"]
    assert next(c for c in waiting["conditions"] if c["type"] == "PreviousAttemptGone")["reason"] == \
        "WaitingForPreviousAttempt"

    op.restart()  # SIGKILL mid-wait: the new operator must neither start attempt 2 early nor count again
    time.sleep(2)  # several polls
    assert k8s.pod_names() == ["wide-a1-0", "wide-a1-1"] and services(k8s) == ["wide-a1"]  # until attempt 2
    assert {k: k8s.status("wide")[k] for k in ("phase", "attempts", "failures", "terminating")} == {
        "phase": "Running", "attempts": 1, "failures": 1, "terminating": ["wide-a1-0"]}
    kubelet.kill("wide-a1-0", signal.SIGCONT)  # it commits its checkpoint, exits, and the pod goes

    done = k8s.wait_phase("wide", "Succeeded", timeout=30)
    assert (done["attempts"], done["failures"]) == (2, 1) and "terminating" not in done
    deleted = pod_events.first("DELETED", "wide-a1-0")
    assert deleted < pod_events.first("ADDED", "wide-a2-0") and deleted < pod_events.first("ADDED", "wide-a2-1")
    assert kubelet.started.count("wide-a2-0") == kubelet.started.count("wide-a2-1") == 1
    assert kubelet.pods["wide-a1-0"].proc.returncode == 143
    stopped = re.search(r"at step (\d+); checkpoint checkpoint-\1 committed",
                        kubelet.pods["wide-a1-0"].termination_log.read_text())
    assert stopped and int(stopped[1]) >= 6
    assert (run.read_report() or {})["resumedFrom"] == f"checkpoint-{stopped[1]}"  # the SIGTERM checkpoint
