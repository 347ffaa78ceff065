"""A multi-node attempt (resources.nodes > 1): one trainer pod per node with a stable identity, a headless
Service that gives node 0 a DNS name for torchrun's rendezvous, and the attempt's state from all its pods.
Pure: dicts in, manifests out (the reconciler creates them, create-or-get, like the single pod).

    pods      <tj>-a<attempt>-<rank>, rank 0 .. nodes-1; hostname node-<rank>, subdomain = the Service
    Service   <tj>-a<attempt> (headless, publishNotReadyAddresses: the rendezvous precedes readiness)
    node 0    node-0.<service>.<namespace>.svc:29500 hosts the rendezvous store

The trainer's side of the contract (tunewright/training/launch.py) reads, on every pod:
TUNEWRIGHT_NODE_RANK, TUNEWRIGHT_MASTER_ADDR, TUNEWRIGHT_MASTER_PORT; the node count and the processes per
node come from the config (resources.nodes, resources.gpus). Global rank 0 is on node 0 and is the only
process that writes the run and serves /metrics, so only pod 0 declares the metrics port.
"""

from __future__ import annotations

import copy
import hashlib
import re
from typing import Any

from tunewright_operator import pods
from tunewright_operator.podstate import PodState, pod_state
from tunewright_operator.settings import Settings

NODE_RANK = "TUNEWRIGHT_NODE_RANK"
MASTER_ADDR = "TUNEWRIGHT_MASTER_ADDR"
MASTER_PORT = "TUNEWRIGHT_MASTER_PORT"
RENDEZVOUS_PORT = 29500
LABEL_NODE_RANK = "tunewright.dev/node-rank"
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def service_name(job: str, attempt: int) -> str:
    """`<tj>-a<attempt>` when that is a valid Service name (a DNS-1035 label), else a short stable stand-in."""
    name = pods.pod_name(job, attempt)
    if _DNS1035.fullmatch(name):
        return name
    return f"tw-{hashlib.sha256(job.encode()).hexdigest()[:12]}-a{attempt}"


def node_pod_name(job: str, attempt: int, rank: int) -> str:
    return pods.bounded(job, f"-a{attempt}-{rank}")


def pod_names(job: str, attempt: int, nodes: int) -> list[str]:
    """The attempt's pod names in rank order (the single pod's own name for one node)."""
    if nodes == 1:
        return [pods.pod_name(job, attempt)]
    return [node_pod_name(job, attempt, rank) for rank in range(nodes)]


def master_addr(tj: dict[str, Any], attempt: int) -> str:
    return f"node-0.{service_name(tj['metadata']['name'], attempt)}.{tj['metadata']['namespace']}.svc"


def _attempt_labels(tj: dict[str, Any], attempt: int) -> dict[str, str]:
    return {pods.LABEL_JOB: pods.job_label(tj["metadata"]["name"]), pods.LABEL_ATTEMPT: str(attempt)}


def job_selector(tj: dict[str, Any]) -> str:
    """Label selector for every trainer pod of the TrainingJob, all attempts."""
    labels = {**pods.MANAGED_BY, pods.LABEL_JOB: pods.job_label(tj["metadata"]["name"])}
    return ",".join(f"{k}={v}" for k, v in labels.items())


def attempt_selector(tj: dict[str, Any], attempt: int) -> str:
    """Label selector for every pod of one attempt (however many nodes)."""
    return ",".join(f"{k}={v}" for k, v in {**pods.MANAGED_BY, **_attempt_labels(tj, attempt)}.items())


def rendezvous_service(tj: dict[str, Any], attempt: int) -> dict[str, Any]:
    """The headless Service of one attempt's pods (a new attempt gets a new one: no stale DNS records)."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": service_name(tj["metadata"]["name"], attempt),
                     "labels": {**pods.MANAGED_BY, **_attempt_labels(tj, attempt)},
                     "ownerReferences": [pods.owner_reference(tj)]},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": _attempt_labels(tj, attempt),
                 "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT,
                            "protocol": "TCP"}]},
    }


def pod_set(tj: dict[str, Any], spec: Any, attempt: int, run: str, storage_uri: str, settings: Settings,
            dataset_secret: str | None = None) -> list[dict[str, Any]]:
    """The attempt's pods: `pods.pod` as is for one node; for several, one per node rank."""
    base = pods.pod(tj, spec, attempt, run, storage_uri, settings, dataset_secret)
    nodes = spec.resources.nodes
    if nodes == 1:
        return [base]
    name = tj["metadata"]["name"]
    return [_node_pod(base, name, attempt, rank, master_addr(tj, attempt)) for rank in range(nodes)]


def _node_pod(base: dict[str, Any], job: str, attempt: int, rank: int, master: str) -> dict[str, Any]:
    pod = copy.deepcopy(base)
    meta, spec = pod["metadata"], pod["spec"]
    container = spec["containers"][0]
    meta["name"] = node_pod_name(job, attempt, rank)
    meta["labels"][LABEL_NODE_RANK] = str(rank)
    spec["hostname"], spec["subdomain"] = f"node-{rank}", service_name(job, attempt)
    container["env"] += [{"name": NODE_RANK, "value": str(rank)}, {"name": MASTER_ADDR, "value": master},
                         {"name": MASTER_PORT, "value": str(RENDEZVOUS_PORT)}]
    rendezvous = {"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}
    if rank == 0:
        container["ports"] = [*container.get("ports", []), rendezvous]
    else:  # only global rank 0 (on node 0) serves /metrics
        container["ports"] = []
        meta["annotations"] = {k: v for k, v in meta.get("annotations", {}).items()
                               if not k.startswith("prometheus.io/")}
    return pod


def attempt_state(members: dict[str, dict[str, Any] | None]) -> PodState:
    """One state for the attempt from its pods by name (None: the pod is gone). The attempt fails as a whole
    when any pod fails or disappears (its peers then hang in, or fail on, a collective); a disruption
    (eviction, preemption) is reported before the errors it causes on the other nodes. It succeeds when
    every pod has succeeded. "Missing" when a pod is gone, "Terminating" when one is being deleted."""
    states = {name: pod_state(pod) if pod is not None else None for name, pod in members.items()}
    gone = [name for name, state in states.items() if state is None]
    if gone:  # like the single pod that disappeared: the reconciler starts the next attempt
        return PodState("Missing", message=f"pod {gone[0]} disappeared")
    failed = [(name, s) for name, s in states.items() if s is not None and s.phase == "Failed"]
    if failed:
        name, state = min(failed, key=lambda f: not f[1].disrupted)
        return PodState("Failed", state.reason, state.disrupted, state.exit_code,
                        f"pod {name}: {state.message}" if state.message else f"pod {name}")
    phases = {s.phase for s in states.values() if s is not None}
    if phases == {"Succeeded"}:
        return PodState("Succeeded")
    deleted = sorted(name for name, s in states.items() if s is not None and s.phase == "Terminating")
    if deleted:  # someone deleted a pod: the attempt is over
        return PodState("Terminating", message=f"pod {deleted[0]} was deleted")
    blocked = [(name, s) for name, s in states.items() if s is not None and s.phase == "Pending" and s.reason]
    if blocked:  # one node's pod that cannot start holds the whole attempt
        name, state = blocked[0]
        return PodState("Pending", state.reason, message=f"pod {name}: {state.message}")
    for phase in ("Running", "Pending"):
        if phase in phases:
            return PodState(phase)
    return PodState(sorted(phases)[0])
