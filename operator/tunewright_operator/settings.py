"""Operator settings: command-line flags over TUNEWRIGHT_* environment variables over defaults."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from tunewright.cli.common import Parser
from tunewright.config import ConfigError, ResourceParams, validate

# The taint that commonly keeps other pods off GPU nodes (GKE sets nvidia.com/gpu=present:NoSchedule on GPU
# node pools; common EKS/Karpenter setups use it too). Tolerating it only permits those nodes. Same default as
# the chart's trainer.gpuTolerations.
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None


def _placement(key: str, text: str) -> ResourceParams:
    """Checked by the same model as a TrainingJob's spec.resources.nodeSelector / tolerations."""
    try:
        return validate({key: _json(text)}, ResourceParams, "value")
    except ConfigError as err:
        raise argparse.ArgumentTypeError("; ".join(err.problems)) from None


def node_selector(text: str) -> dict[str, str]:
    """JSON object of node labels, e.g. {"nvidia.com/gpu.present": "true"}."""
    return _placement("nodeSelector", text).node_selector or {}


def tolerations(text: str) -> tuple[dict[str, Any], ...]:
    """JSON list of core/v1 tolerations, normalised as a TrainingJob's are (so that equal ones compare equal)."""
    return tuple(t.to_dict() for t in _placement("tolerations", text).tolerations or [])


def pull_secrets(text: str) -> tuple[str, ...]:
    """JSON list of Secret references as in a pod spec ([{"name": "regcred"}]); their names."""
    refs = _json(text)
    if not isinstance(refs, list) or not all(isinstance(r, dict) and isinstance(r.get("name"), str) and r["name"]
                                             for r in refs):
        raise argparse.ArgumentTypeError(f'want a JSON list like [{{"name": "regcred"}}]: {text!r}')
    return tuple(r["name"] for r in refs)


def _strings(text: str) -> list[str]:
    values = _json(text)
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise argparse.ArgumentTypeError(f'want a JSON list of strings like ["registry.example.com/x/*"]: {text!r}')
    return values


def pull_policy(text: str) -> str:
    if text and text not in PULL_POLICIES:  # empty: Kubernetes' default
        raise argparse.ArgumentTypeError(f"want one of {', '.join(PULL_POLICIES)}: {text!r}")
    return text


def flag(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"want true or false: {text!r}")
    return text.lower() == "true"


PULL_POLICIES = ("Always", "IfNotPresent", "Never")


@dataclass(frozen=True)
class Settings:
    image: str = field(default="ghcr.io/tunewright/trainer:0.1.0",
                       metadata={"help": "trainer image when a TrainingJob names none"})
    storage: str = field(default="", metadata={"help": "storage root when a TrainingJob names none "
                                               "(s3://bucket/prefix or file://path)"})
    max_concurrent_jobs: int = field(default=1, metadata={"help": "TrainingJobs running at once; the rest queue"})
    poll_seconds: float = field(default=15.0, metadata={"help": "how often running jobs' progress is read "
                                                        "from storage (and the queue re-checked)"})
    metrics_port: int = field(default=9090, metadata={"help": "Prometheus /metrics port (0: off)"})
    health_port: int = field(default=8080, metadata={"help": "Kopf liveness /healthz port (0: off)"})
    trainer_metrics_port: int = field(default=9400, metadata={"help": "the trainer pods' /metrics port"})
    grace_seconds: int = field(default=300, metadata={"help": "pod terminationGracePeriodSeconds: time to "
                                                      "checkpoint and upload on SIGTERM"})
    termination_margin_seconds: int = field(default=60, metadata={"help": "seconds past a deleted trainer "
                                            "pod's grace period before it is reported stuck terminating"})
    allowed_images: tuple[str, ...] = field(
        default=(), metadata={"type": lambda text: tuple(_strings(text)), "help": "JSON list of trainer images "
                              "(fnmatch patterns, e.g. registry.example.com/tunewright/*) a TrainingJob's "
                              "spec.image may name; empty: --image only"})
    pending_timeout_seconds: int = field(default=600, metadata={"help": "seconds a trainer pod may wait for "
                                         "something a person must fix (ErrImagePull, CreateContainerConfigError, "
                                         "Unschedulable, ...) before its attempt fails"})
    gpu_node_selector: dict[str, str] = field(
        default_factory=dict, metadata={"type": node_selector, "help": "JSON node labels for trainer pods that "
                                        "request GPUs; a TrainingJob's nodeSelector keys win"})
    gpu_tolerations: tuple[dict[str, Any], ...] = field(
        default=(GPU_TOLERATION,), metadata={"type": tolerations, "help": "JSON tolerations for trainer pods that "
                                             "request GPUs; a TrainingJob's tolerations are added"})
    trainer_image_pull_policy: str = field(default="", metadata={"type": pull_policy, "help": "trainer pods' "
                                           "imagePullPolicy (Always, IfNotPresent, Never; empty: Kubernetes' default)"})
    trainer_image_pull_secrets: tuple[str, ...] = field(
        default=(), metadata={"type": pull_secrets, "help": "JSON list of Secret references for trainer pods' "
                              "imagePullSecrets (the Secrets must exist in each job's namespace)"})
    trainer_service_account: str = field(default="", metadata={"help": "trainer pods' ServiceAccount (it must "
                                         "exist in each job's namespace; empty: the namespace's default)"})
    trainer_scrape_annotations: bool = field(default=True, metadata={"type": flag, "help": "prometheus.io/scrape "
                                             "annotations on trainer pods (false where a PodMonitor scrapes them)"})
    lease_namespace: str = field(default="", metadata={"help": "namespace of the Lease that keeps one operator "
                                 "active (the chart sets the operator's own; empty: the first --namespace, else "
                                 "default)"})
    lease_seconds: int = field(default=15, metadata={"help": "leader-election lease duration: a crashed "
                                 "operator's successor waits this long before it acts"})
    namespaces: tuple[str, ...] = field(default=(), metadata={"help": "namespaces to serve (repeatable or "
                                                              "comma-separated; default: the whole cluster)"})

    @staticmethod
    def env_name(name: str) -> str:
        return "TUNEWRIGHT_" + name.upper()

    @classmethod
    def parse(cls, argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        parser = Parser(prog="tunewright-operator", description="The tunewright Kopf operator.")
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            if f.name == "namespaces":
                parser.add_argument("--namespace", dest="namespaces", action="append", help=f.metadata["help"])
                continue
            convert = _converter(f)
            shown = json.dumps(_default(f)) if "type" in f.metadata else "%(default)s"
            parser.add_argument(flag, type=convert, default=_env_value(parser, f, convert, env),
                                help=f"{f.metadata['help']} (env {cls.env_name(f.name)}; default {shown})")
        args = vars(parser.parse_args(argv))
        raw = args.pop("namespaces") or [env.get(cls.env_name("namespaces"), "")]
        names = tuple(n.strip() for item in raw for n in item.split(",") if n.strip())
        settings = cls(**args, namespaces=names)
        if settings.max_concurrent_jobs < 1:
            parser.error("--max-concurrent-jobs must be >= 1")
        if settings.lease_seconds < 4:  # the renewal needs at least a second between tries
            parser.error("--lease-seconds must be >= 4")
        return settings


def _default(f: Field[Any]) -> Any:
    return f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default


def _converter(f: Field[Any]) -> Callable[[str], Any]:
    return f.metadata.get("type") or type(f.default)


def _env_value(parser: argparse.ArgumentParser, f: Field[Any], convert: Callable[[str], Any],
               env: Mapping[str, str]) -> Any:
    """The field's environment variable, converted (a bad one stops start-up naming it), else its default."""
    name = Settings.env_name(f.name)
    text = env.get(name)
    if not text:
        return _default(f)
    try:
        return convert(text)
    except (ValueError, argparse.ArgumentTypeError) as err:
        parser.exit(2, f"{parser.prog}: error: {name}: {err}\n")
