"""The operator's Prometheus metrics (prometheus-client), served on --metrics-port at /metrics."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram

from tunewright_operator.models import Phase

JOBS = Gauge("tunewright_operator_jobs", "TrainingJobs by phase (as of the latest queue check)", ["phase"])
QUEUE_DEPTH = Gauge("tunewright_operator_queue_depth", "TrainingJobs waiting for a free slot")
RECONCILE_ERRORS = Counter("tunewright_operator_reconcile_errors", "Handler runs that raised", ["handler"])
JOB_DURATION = Histogram("tunewright_operator_job_duration_seconds", "Start to finish of TrainingJobs",
                         ["method", "outcome"],
                         buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, float("inf")))

F = TypeVar("F", bound=Callable[..., Any])


def observe_phases(counts: dict[str, int], waiting: int) -> None:
    for phase in Phase.__args__:  # type: ignore[attr-defined]
        JOBS.labels(phase=phase).set(counts.get(phase, 0))
    QUEUE_DEPTH.set(waiting)


def counted(handler: str) -> Callable[[F], F]:
    """Count exceptions of a handler in tunewright_operator_reconcile_errors_total{handler=...}."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception:
                RECONCILE_ERRORS.labels(handler=handler).inc()
                raise
        return inner  # type: ignore[return-value]
    return wrap
