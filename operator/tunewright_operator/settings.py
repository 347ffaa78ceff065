"""Operator settings: command-line flags over TUNEWRIGHT_* environment variables over defaults."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields


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
    namespaces: tuple[str, ...] = field(default=(), metadata={"help": "namespaces to serve (repeatable or "
                                                              "comma-separated; default: the whole cluster)"})

    @staticmethod
    def env_name(name: str) -> str:
        return "TUNEWRIGHT_" + name.upper()

    @classmethod
    def parse(cls, argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        parser = argparse.ArgumentParser(prog="tunewright-operator", description="The tunewright Kopf operator.")
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            env_value = env.get(cls.env_name(f.name))
            if f.name == "namespaces":
                parser.add_argument("--namespace", dest="namespaces", action="append", help=f.metadata["help"])
                continue
            kind = type(f.default)
            parser.add_argument(flag, type=kind, default=kind(env_value) if env_value else f.default,
                                help=f"{f.metadata['help']} (env {cls.env_name(f.name)}; default %(default)s)")
        args = vars(parser.parse_args(argv))
        raw = args.pop("namespaces") or [env.get(cls.env_name("namespaces"), "")]
        names = tuple(n.strip() for item in raw for n in item.split(",") if n.strip())
        settings = cls(**args, namespaces=names)
        if settings.max_concurrent_jobs < 1:
            parser.error("--max-concurrent-jobs must be >= 1")
        return settings
