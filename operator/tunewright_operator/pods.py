"""The trainer pod and its ConfigMap for one attempt of a TrainingJob (pure: dicts in, manifests out)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import yaml

from tunewright.config import TrainingConfig
from tunewright.storage import DATASET_ENV_PREFIX
from tunewright_operator.models import API_VERSION
from tunewright_operator.settings import Settings

CONFIG_DIR = "/etc/tunewright"
CONFIG_FILE = "config.yaml"
TERMINATION_LOG = "/dev/termination-log"
LABEL_JOB = "tunewright.dev/trainingjob"
LABEL_ATTEMPT = "tunewright.dev/attempt"
MANAGED_BY = {"app.kubernetes.io/managed-by": "tunewright-operator"}
SELECTOR = f"app.kubernetes.io/managed-by=tunewright-operator,{LABEL_JOB}"  # the trainer pods
TRAINER_COMMAND = "tunewright-train"


def bounded(base: str, suffix: str = "", limit: int = 253) -> str:
    """`base + suffix` when it fits in `limit` characters, else base cut short plus a hash of all of it: any valid
    TrainingJob name (up to 253 characters, dots allowed) gives valid derived names and label values."""
    if len(base) + len(suffix) <= limit:
        return base + suffix
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    return f"{base[:limit - len(suffix) - 9].rstrip('-.')}-{digest}{suffix}"


def job_label(job: str) -> str:
    """The job's name as a label value (at most 63 characters); pods name their job by ownerReference."""
    return bounded(job, limit=63)


def owner_job(meta: dict[str, Any]) -> str | None:
    """The name of the TrainingJob that controls an object (its controller ownerReference)."""
    return next((ref["name"] for ref in meta.get("ownerReferences") or []
                 if ref.get("kind") == "TrainingJob" and ref.get("controller")), None)


def pod_name(job: str, attempt: int) -> str:
    return bounded(job, f"-a{attempt}")


def config_map_name(job: str) -> str:
    return bounded(job, "-config")


def run_id(namespace: str, name: str, uid: str) -> str:
    """Stable per TrainingJob, a DNS-1123 label: `<namespace>-<name>` cut to fit, plus the uid's first 8 chars."""
    base = re.sub(r"[^a-z0-9-]", "-", f"{namespace}-{name}".lower())[:54].strip("-")
    return f"{base}-{uid.replace('-', '')[:8]}"


def owner_reference(tj: dict[str, Any]) -> dict[str, Any]:
    meta = tj["metadata"]
    return {"apiVersion": API_VERSION, "kind": "TrainingJob", "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _labels(tj: dict[str, Any], **extra: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "tunewright-trainer", **MANAGED_BY, LABEL_JOB: job_label(tj["metadata"]["name"]),
            **extra}


def config_map(tj: dict[str, Any], config: TrainingConfig) -> dict[str, Any]:
    """The trainer's config file; written once per TrainingJob (retries must resume with the same config)."""
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": config_map_name(tj["metadata"]["name"]), "labels": _labels(tj),
                     "ownerReferences": [owner_reference(tj)]},
        "data": {CONFIG_FILE: yaml.safe_dump(config.to_dict(), sort_keys=False)},
    }


def _resources(resources: Any) -> dict[str, Any]:
    amounts: dict[str, str] = {}
    if resources.cpu:
        amounts["cpu"] = resources.cpu
    if resources.memory:
        amounts["memory"] = resources.memory
    if resources.gpus:
        amounts["nvidia.com/gpu"] = str(resources.gpus)  # extended resources: requests must equal limits
    limits = {k: v for k, v in amounts.items() if k != "cpu"}
    return {k: v for k, v in (("requests", amounts), ("limits", limits)) if v}


def _placement(resources: Any, settings: Settings) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """nodeSelector and tolerations: the job's own, over the operator's GPU defaults when it requests GPUs
    (the job's selector keys win; its tolerations follow the defaults, identical ones once)."""
    selector = dict(resources.node_selector or {})
    tolerations = [t.to_dict() for t in resources.tolerations or []]
    if resources.gpus:
        selector = {**settings.gpu_node_selector, **selector}
        tolerations = [*settings.gpu_tolerations, *tolerations]
    unique: list[dict[str, Any]] = []
    for toleration in tolerations:
        if toleration not in unique:
            unique.append(dict(toleration))
    return selector, unique


def _env(tj: dict[str, Any], storage_uri: str, settings: Settings) -> list[dict[str, Any]]:
    meta = tj["metadata"]
    values = {
        "TUNEWRIGHT_STORAGE": storage_uri,
        "TUNEWRIGHT_TRAININGJOB": meta["name"],
        "TUNEWRIGHT_NAMESPACE": meta["namespace"],
        "TUNEWRIGHT_TRAININGJOB_UID": meta["uid"],
        "TUNEWRIGHT_TERMINATION_LOG": TERMINATION_LOG,
        "TUNEWRIGHT_METRICS_PORT": str(settings.trainer_metrics_port),
        # the pod's terminationGracePeriodSeconds: a SIGTERM checkpoint that cannot commit in time says so
        "TUNEWRIGHT_TERMINATION_GRACE_SECONDS": str(settings.grace_seconds),
        "HOME": "/tmp",  # the root filesystem may be read-only; caches go to the scratch volume
    }
    return [{"name": k, "value": v} for k, v in values.items()]


def pod(tj: dict[str, Any], spec: Any, attempt: int, run: str, storage_uri: str, settings: Settings,
        dataset_secret: str | None = None) -> dict[str, Any]:
    """The pod for attempt `attempt`: resumes the run from its latest committed checkpoint."""
    name = tj["metadata"]["name"]
    res = spec.resources
    container: dict[str, Any] = {
        "name": "trainer",
        "image": spec.image or settings.image,
        "command": [TRAINER_COMMAND],
        "args": ["--config", f"{CONFIG_DIR}/{CONFIG_FILE}", "--storage", storage_uri, "--run-id", run,
                 "--resume", "auto", "--metrics-port", str(settings.trainer_metrics_port), "--quiet"],
        "env": _env(tj, storage_uri, settings),
        "ports": [{"name": "metrics", "containerPort": settings.trainer_metrics_port}],
        "resources": _resources(res),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                         {"name": "scratch", "mountPath": "/tmp"}],
    }
    env_from = [{"secretRef": {"name": spec.storage.secret_name}}] if spec.storage.secret_name else []
    if dataset_secret and dataset_secret != spec.storage.secret_name:
        env_from.append({"prefix": DATASET_ENV_PREFIX, "secretRef": {"name": dataset_secret}})
    if env_from:
        container["envFrom"] = env_from
    if settings.trainer_image_pull_policy:
        container["imagePullPolicy"] = settings.trainer_image_pull_policy
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # the operator retries, as a new attempt that resumes from a checkpoint
        "terminationGracePeriodSeconds": settings.grace_seconds,
        "automountServiceAccountToken": False,  # the trainer never calls the Kubernetes API
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "config", "configMap": {"name": config_map_name(name)}},
                    {"name": "scratch", "emptyDir": {}}],
    }
    if res.gpus > 1:  # NCCL's shared-memory transport needs more than the runtime's default 64 MB /dev/shm
        container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
        pod_spec["volumes"].append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    selector, tolerations = _placement(res, settings)
    if selector:
        pod_spec["nodeSelector"] = selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if res.priority_class_name:
        pod_spec["priorityClassName"] = res.priority_class_name
    if settings.trainer_service_account:
        pod_spec["serviceAccountName"] = settings.trainer_service_account
    if settings.trainer_image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in settings.trainer_image_pull_secrets]
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(settings.trainer_metrics_port)} \
        if settings.trainer_scrape_annotations else {}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": pod_name(name, attempt),
            "labels": _labels(tj, **{LABEL_ATTEMPT: str(attempt)}),
            **({"annotations": annotations} if annotations else {}),
            "ownerReferences": [owner_reference(tj)],
        },
        "spec": pod_spec,
    }
