"""The metric series the code really exports, with their label names, read from the live prometheus-client
metrics of the trainer's exporter and of the operator (not from a list kept by hand)."""

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
    metrics.started(0, 10, 5)
    metrics.progressed(1)
    metrics.checkpoint_committed(2.0)
    return _series(metrics.registry)


def operator_series() -> dict[str, set[str]]:
    """Every series the operator exports: its module-level metrics, each with one labelled child."""
    from prometheus_client.metrics import MetricWrapperBase

    from tunewright_operator import metrics

    series: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        values = ["x"] * len(metric._labelnames)  # no public accessor for a metric's label names
        if values:
            metric.labels(*values)
        for family in metric.collect():
            for sample in family.samples:
                series.setdefault(sample.name, set()).update(sample.labels)
        if values:
            metric.remove(*values)  # leave the process-wide registry as it was
    return series


def exported_series() -> dict[str, set[str]]:
    return trainer_series() | operator_series()
