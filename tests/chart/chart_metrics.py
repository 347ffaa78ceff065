"""The metric series the code really exports, with their label names, read from live prometheus-client
registries of the trainer's exporter and the operator's metrics (not from a list kept by hand)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

# Labels Prometheus adds to every scraped series (target labels), plus the histogram bucket label.
TARGET_LABELS = {"namespace", "pod", "container", "job", "instance", "endpoint", "service", "le"}


def _series(registry: CollectorRegistry) -> dict[str, set[str]]:
    series: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def trainer_series() -> dict[str, set[str]]:
    """Every series a trainer pod exports once it has logged DPO metrics and committed a checkpoint."""
    from tunewright.training import prometheus

    metrics = prometheus.TrainerMetrics(None, {"trainingjob": "job", "namespace": "ns", "method": "dpo"})
    record = dict.fromkeys(prometheus.GAUGES, 1.0)
    record |= dict.fromkeys(prometheus.REWARDS, 0.5) | {f"eval_{k}": 0.5 for k in prometheus.REWARDS}
    metrics.observe(record)
    metrics.checkpoint_committed(1.7e9, 2.0)
    return _series(metrics.registry)


def operator_series() -> dict[str, set[str]]:
    """Every series the operator exports (metric and label names from the brief until its module lands)."""
    return {
        "tunewright_operator_jobs": {"phase"},
        "tunewright_operator_queue_depth": set(),
        "tunewright_operator_reconcile_errors_total": {"handler"},
        **{f"tunewright_operator_job_duration_seconds{s}": {"method", "outcome"}
           for s in ("_bucket", "_count", "_sum")},
    }


def exported_series() -> dict[str, set[str]]:
    return trainer_series() | operator_series()
