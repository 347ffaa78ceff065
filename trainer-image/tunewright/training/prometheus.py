"""The trainer's Prometheus exporter: gauges fed from the same records that go to metrics.jsonl.

Every metric carries the job's labels (trainingjob, namespace, method); the DPO reward gauges also carry
`split` ("train", or "eval" for the `eval_`-prefixed keys) so train and eval values do not overwrite each
other. A gauge appears once its first value is observed: an SFT run exports no reward gauges.

Liveness, for the stall and stale-checkpoint alerts: `started()` and `progressed()` (called at every optimizer
step and evaluation batch, not only at logging steps) keep `last_progress_timestamp_seconds` and
`checkpoint_interval_seconds` (the configured checkpoint interval in steps times the mean step time measured
since the attempt started) current. `step` stays the logged step, so that a scrape's step, loss and learning
rate are always one metrics.jsonl record's. Timestamps come from `clock` (Unix seconds). `watch_storage()`
exports how long the store has been unreachable, read at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

PREFIX = "tunewright_train_"

# metrics.jsonl key (as HF Trainer / TRL log it) -> (gauge name without prefix, help text)
GAUGES: dict[str, tuple[str, str]] = {
    "loss": ("loss", "Training loss at the last logging step."),
    "eval_loss": ("eval_loss", "Validation loss at the last evaluation."),
    "learning_rate": ("learning_rate", "Current learning rate."),
    "grad_norm": ("grad_norm", "Gradient norm (before clipping) at the last logging step."),
    "step": ("step", "Optimizer steps done."),
    "epoch": ("epoch", "Epochs done (fractional)."),
    "total_steps": ("total_steps", "Optimizer steps the run will take in total."),
    "samples_per_second": ("samples_per_second", "Training throughput in samples per second."),
    "train_samples_per_second": ("samples_per_second", "Training throughput in samples per second."),
    "tokens_per_second": ("tokens_per_second", "Training throughput in tokens per second."),
    "train_tokens_per_second": ("tokens_per_second", "Training throughput in tokens per second."),
}
REWARDS: dict[str, tuple[str, str]] = {
    "rewards/chosen": ("reward_chosen", "DPO: mean implicit reward of the chosen completions."),
    "rewards/rejected": ("reward_rejected", "DPO: mean implicit reward of the rejected completions."),
    "rewards/margins": ("reward_margin", "DPO: mean reward margin, chosen minus rejected."),
    "rewards/accuracies": ("reward_accuracy", "DPO: fraction of pairs whose chosen reward is higher."),
}
UPLOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class TrainerMetrics:
    """Prometheus metrics of one training process, in a registry of its own (several may coexist)."""

    def __init__(self, port: int | None, labels: dict[str, str], addr: str = "0.0.0.0",
                 clock: Callable[[], float] = time.time):
        self.labels = dict(labels)
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        names = sorted(self.labels)
        self._gauges: dict[str, Gauge] = {}
        for name, doc in dict(GAUGES.values()).items():
            self._gauges[name] = Gauge(PREFIX + name, doc, names, registry=self.registry)
        for name, doc in REWARDS.values():
            self._gauges[name] = Gauge(PREFIX + name, doc, [*names, "split"], registry=self.registry)
        self._last_checkpoint = Gauge(PREFIX + "last_checkpoint_timestamp_seconds",
                                      "Unix time of the last committed checkpoint (of the attempt's start "
                                      "until its first).", names, registry=self.registry)
        self._last_progress = Gauge(PREFIX + "last_progress_timestamp_seconds",
                                    "Unix time of the last optimizer step or evaluation batch.", names,
                                    registry=self.registry)
        self._checkpoint_interval = Gauge(PREFIX + "checkpoint_interval_seconds",
                                          "Expected seconds between checkpoints: the configured interval in "
                                          "steps times the measured mean seconds per step.", names,
                                          registry=self.registry)
        self._mark: tuple[float, int] | None = None  # (time, step) at the attempt's start
        self._interval_steps = 0
        self._upload = Histogram(PREFIX + "checkpoint_upload_seconds",
                                 "Seconds from the start of a checkpoint's upload to its commit.", names,
                                 buckets=UPLOAD_BUCKETS, registry=self.registry)
        self._outage = Gauge(PREFIX + "storage_outage_seconds",
                             "Seconds the storage has been unreachable (0 while it answers); training goes on "
                             "meanwhile, up to TUNEWRIGHT_STORAGE_OUTAGE_SECONDS.", names, registry=self.registry)
        self._outages = Gauge(PREFIX + "storage_outages", "Storage outages this attempt has ridden out or is in.",
                              names, registry=self.registry)
        self.port: int | None = None
        self._server: Any = None
        if port is not None:
            self._server, _ = start_http_server(port, addr=addr, registry=self.registry)
            self.port = self._server.server_port

    def observe(self, record: dict[str, Any]) -> None:
        """Set the gauges from one metrics.jsonl record; unknown keys and non-numbers are skipped."""
        for key, value in record.items():
            number = _number(value)
            if number is None:
                continue
            if key in GAUGES:
                self._gauges[GAUGES[key][0]].labels(**self.labels).set(number)
                continue
            split = "eval" if key.startswith("eval_") else "train"
            reward = REWARDS.get(key.removeprefix("eval_"))
            if reward is not None:
                self._gauges[reward[0]].labels(**self.labels, split=split).set(number)

    def started(self, step: int, total_steps: int, checkpoint_interval_steps: int) -> None:
        """Training (this attempt) begins at `step`; a checkpoint is due every `checkpoint_interval_steps`."""
        now = self.clock()
        self._mark, self._interval_steps = (now, step), checkpoint_interval_steps
        self._gauges["total_steps"].labels(**self.labels).set(total_steps)
        self._gauges["step"].labels(**self.labels).set(step)
        self._last_checkpoint.labels(**self.labels).set(now)  # what a crash loses is counted from here
        self.progressed(step)

    def progressed(self, step: int) -> None:
        """An optimizer step (or an evaluation batch) finished: the heartbeat the stall alert watches."""
        now = self.clock()
        self._last_progress.labels(**self.labels).set(now)
        if self._mark is not None and step > self._mark[1] and self._interval_steps:
            per_step = (now - self._mark[0]) / (step - self._mark[1])
            self._checkpoint_interval.labels(**self.labels).set(per_step * self._interval_steps)

    def checkpoint_committed(self, upload_seconds: float) -> None:
        self._last_checkpoint.labels(**self.labels).set(self.clock())
        self._upload.labels(**self.labels).observe(upload_seconds)

    def watch_storage(self, outage: Any) -> None:
        """Export a tunewright.outages.Outage: read at each scrape, so an ongoing outage's age grows."""
        self._outage.labels(**self.labels).set_function(outage.seconds)
        self._outages.labels(**self.labels).set_function(lambda: outage.outages)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
