"""The operator's multi-node pod set and rendezvous Service, rendered and checked against the trainer's
launch contract (the env each pod gets is parsed by the very function the trainer uses)."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest

from support.pss import restricted_violations
from tunewright.config import TrainingConfig, validate
from tunewright.training import launch
from tunewright_operator import multinode, pods
from tunewright_operator.models import TrainingJobSpec
from tunewright_operator.podstate import PodState
from tunewright_operator.settings import Settings
from tunewright_operator.validation import OPERATOR_FIELDS

TJ: dict[str, Any] = {"apiVersion": "tunewright.dev/v1alpha1", "kind": "TrainingJob",
                      "metadata": {"name": "tune", "namespace": "ml", "uid": "0f1e2d3c-aaaa-bbbb-cccc-0123456789ab"}}


def spec(**resources: Any) -> TrainingJobSpec:
    return validate({"dataset": {"id": "songs"}, "resources": resources}, TrainingJobSpec)


def render(s: TrainingJobSpec, attempt: int = 2, tj: dict[str, Any] = TJ) -> list[dict[str, Any]]:
    return multinode.pod_set(tj, s, attempt, "ml-tune-0f1e2d3c", "s3://b/p", Settings())


def env(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}


def test_one_node_is_the_single_pod_unchanged() -> None:
    s = spec(gpus=2)
    assert render(s) == [pods.pod(TJ, s, 2, "ml-tune-0f1e2d3c", "s3://b/p", Settings())]


def test_one_pod_per_node_with_ordinal_names_and_rank_env_the_trainer_understands() -> None:
    s = spec(gpus=2, nodes=3)
    members = render(s)
    service = multinode.rendezvous_service(TJ, 2)
    assert [p["metadata"]["name"] for p in members] == ["tune-a2-0", "tune-a2-1", "tune-a2-2"]
    config = TrainingConfig.model_validate(s.model_dump(by_alias=True, exclude_none=True, exclude=OPERATOR_FIELDS))
    for rank, pod in enumerate(members):
        meta, podspec = pod["metadata"], pod["spec"]
        assert meta["ownerReferences"] == [pods.owner_reference(TJ)]
        assert meta["labels"][multinode.LABEL_NODE_RANK] == str(rank)
        assert (podspec["hostname"], podspec["subdomain"]) == (f"node-{rank}", service["metadata"]["name"])
        assert podspec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert podspec["restartPolicy"] == "Never"  # a failed node fails the attempt; the operator retries it
        assert restricted_violations(podspec) == []
        kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
        # The trainer's launcher, fed this pod's env and the job's config, joins the right rendezvous.
        assert launch.topology(config, env=env(pod), visible_gpus=2) == launch.Topology(
            nproc_per_node=2, nnodes=3, node_rank=rank, master_addr="node-0.tune-a2.ml.svc", master_port=29500)
    # Only node 0 runs global rank 0, the process that serves /metrics and hosts the rendezvous store.
    first, others = members[0], members[1:]
    assert {p["name"] for p in first["spec"]["containers"][0]["ports"]} == {"metrics", "rendezvous"}
    assert first["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    for pod in others:
        assert pod["spec"]["containers"][0]["ports"] == []
        assert not any(k.startswith("prometheus.io/") for k in pod["metadata"].get("annotations", {}))


def test_headless_service_selects_exactly_the_attempts_pods() -> None:
    service = multinode.rendezvous_service(TJ, 2)
    kubernetes_validate.validate(service, kubernetes_validate.latest_version(), strict=True)
    assert service["metadata"]["name"] == "tune-a2"
    assert service["metadata"]["ownerReferences"] == [pods.owner_reference(TJ)]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["ports"] == [{"name": "rendezvous", "port": 29500, "targetPort": 29500,
                                         "protocol": "TCP"}]
    selector = service["spec"]["selector"].items()
    assert all(selector <= p["metadata"]["labels"].items() for p in render(spec(nodes=2), attempt=2))
    assert not any(selector <= p["metadata"]["labels"].items() for p in render(spec(nodes=2), attempt=3))


def test_names_stay_valid_for_any_trainingjob_name() -> None:
    tj = {**TJ, "metadata": {**TJ["metadata"], "name": "7-" + "x" * 240}}
    name = multinode.service_name(tj["metadata"]["name"], 12)
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name), name
    assert name == multinode.service_name(tj["metadata"]["name"], 12)  # stable across operator restarts
    assert name != multinode.service_name(tj["metadata"]["name"] + "y", 12)
    for pod in render(spec(nodes=2), attempt=12, tj=tj):
        assert pod["spec"]["subdomain"] == name and len(pod["spec"]["hostname"]) <= 63
        assert env(pod)[multinode.MASTER_ADDR] == f"node-0.{name}.ml.svc"


def test_env_names_are_the_trainers() -> None:
    assert (multinode.NODE_RANK, multinode.MASTER_ADDR, multinode.MASTER_PORT) == (
        launch.NODE_RANK, launch.MASTER_ADDR, launch.MASTER_PORT)
    assert multinode.RENDEZVOUS_PORT == launch.DEFAULT_MASTER_PORT


def _pod(phase: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "status": {"phase": phase, **status}}


def _exited(code: int, message: str) -> dict[str, Any]:
    return _pod("Failed", containerStatuses=[{"name": "trainer", "state": {"terminated": {
        "exitCode": code, "message": message, "reason": "Error"}}}])


@pytest.mark.parametrize(("members", "expected"), [
    ({"a-0": _pod("Running"), "a-1": _pod("Pending")}, PodState("Running")),
    ({"a-0": _pod("Succeeded"), "a-1": _pod("Running")}, PodState("Running")),
    ({"a-0": _pod("Succeeded"), "a-1": _pod("Succeeded")}, PodState("Succeeded")),
    ({"a-0": _pod("Running"), "a-1": None}, PodState("Missing", message="pod a-1 disappeared")),
    ({"a-0": _exited(1, "rank 0 of 4: Connection closed by peer"), "a-1": _exited(1, "rank 2 of 4: bad data")},
     PodState("Failed", "TrainerError", False, 1, "pod a-0: rank 0 of 4: Connection closed by peer")),
    # The eviction of node 1 is the cause; node 0's broken collective is its consequence.
    ({"a-0": _exited(1, "rank 0 of 4: Connection reset"),
      "a-1": _pod("Failed", reason="Evicted", message="low memory")},
     PodState("Failed", "Evicted", True, None, "pod a-1: low memory")),
])
def test_attempt_state_fails_as_a_whole(members: dict[str, Any], expected: PodState) -> None:
    assert multinode.attempt_state(members) == expected
