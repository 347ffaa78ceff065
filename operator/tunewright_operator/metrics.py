"""The operator's Prometheus metrics (prometheus-client), served on --metrics-port at /metrics.

Every label set a labelled counter or histogram can take exists from start-up, at 0: a series that first
appears at 1 is invisible to increase() and rate(), so an alert on them would miss the first event after
each operator start. JOB_DURATION's come from the methods and JOB_OUTCOMES below; RECONCILE_ERRORS' from
each handler wrapped in counted(), when it is wrapped (at registration, before Kopf runs).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, get_args

from prometheus_client import Counter, Gauge, Histogram

from tunewright.config import Method
from tunewright_operator.models import Phase

JOBS = Gauge("tunewright_operator_jobs", "TrainingJobs by phase (as of the latest queue check)", ["phase"])
QUEUE_DEPTH = Gauge("tunewright_operator_queue_depth", "TrainingJobs waiting for a free slot")
RECONCILE_ERRORS = Counter("tunewright_operator_reconcile_errors", "Handler runs that raised", ["handler"])
JOB_DURATION = Histogram("tunewright_operator_job_duration_seconds", "Start to finish of TrainingJobs",
                         ["method", "outcome"],
                         buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, float("inf")))
# The phases a job is finished in (reconcile's _finish; a deleted job is never observed).
JOB_OUTCOMES = ("Succeeded", "Failed")
for _method in get_args(Method):
    for _outcome in JOB_OUTCOMES:
        JOB_DURATION.labels(method=_method, outcome=_outcome.lower())

F = TypeVar("F", bound=Callable[..., Any])


def observe_phases(counts: dict[str, int], waiting: int) -> None:
    for phase in Phase.__args__:  # type: ignore[attr-defined]
        JOBS.labels(phase=phase).set(counts.get(phase, 0))
    QUEUE_DEPTH.set(waiting)


def counted(handler: str) -> Callable[[F], F]:
    """Count exceptions of a handler in tunewright_operator_reconcile_errors_total{handler=...} (from 0)."""
    RECONCILE_ERRORS.labels(handler=handler)

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
