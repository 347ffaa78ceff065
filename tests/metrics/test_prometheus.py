"""The trainer's /metrics endpoint, scraped over HTTP and parsed with prometheus_client's parser."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tunewright.training.prometheus import TrainerMetrics

LABELS = {"trainingjob": "songs-dpo", "namespace": "ml", "method": "dpo"}
README = Path(__file__).parents[2] / "README.md"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of everything the endpoint serves."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def key(name: str, **extra: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted({**LABELS, **extra}.items()))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(1_790_000_000.5)


@pytest.fixture
def metrics(clock: Clock) -> TrainerMetrics:
    exporter = TrainerMetrics(port=0, labels=LABELS, addr="127.0.0.1", clock=clock)
    yield exporter
    exporter.close()


def test_scraped_values_equal_the_observed_records(metrics: TrainerMetrics, clock: Clock) -> None:
    train = {"step": 40, "epoch": 1.5, "loss": 0.6931, "learning_rate": 4.5e-3, "grad_norm": 1.25,
             "total_steps": 120, "samples_per_second": 35.5, "tokens_per_second": 2200.0,
             "rewards/chosen": 0.12, "rewards/rejected": -0.08, "rewards/margins": 0.2,
             "rewards/accuracies": 0.75, "timestamp": "2026-11-25T06:00:00Z", "logps/chosen": -12.0}
    evaluation = {"step": 40, "epoch": 1.5, "eval_loss": 0.65, "eval_rewards/chosen": 0.1,
                  "eval_rewards/rejected": -0.2, "eval_rewards/margins": 0.3, "eval_rewards/accuracies": 0.875,
                  "eval_samples_per_second": 99.0}
    metrics.observe({"step": 30, "loss": 0.9, "learning_rate": 5e-3})  # older values get overwritten
    metrics.observe(train)
    metrics.observe(evaluation)
    metrics.checkpoint_committed(upload_seconds=0.7)
    clock.now = 1_790_000_100.25
    metrics.checkpoint_committed(upload_seconds=3.0)

    got = scrape(metrics.port)
    p = "tunewright_train_"
    expected = {
        key(p + "step"): 40, key(p + "epoch"): 1.5, key(p + "loss"): 0.6931, key(p + "learning_rate"): 4.5e-3,
        key(p + "grad_norm"): 1.25, key(p + "total_steps"): 120, key(p + "samples_per_second"): 35.5,
        key(p + "tokens_per_second"): 2200.0, key(p + "eval_loss"): 0.65,
        key(p + "reward_chosen", split="train"): 0.12, key(p + "reward_rejected", split="train"): -0.08,
        key(p + "reward_margin", split="train"): 0.2, key(p + "reward_accuracy", split="train"): 0.75,
        key(p + "reward_chosen", split="eval"): 0.1, key(p + "reward_rejected", split="eval"): -0.2,
        key(p + "reward_margin", split="eval"): 0.3, key(p + "reward_accuracy", split="eval"): 0.875,
        key(p + "last_checkpoint_timestamp_seconds"): 1_790_000_100.25,
        key(p + "checkpoint_upload_seconds_count"): 2, key(p + "checkpoint_upload_seconds_sum"): 3.7,
        key(p + "checkpoint_upload_seconds_bucket", le="1.0"): 1,
        key(p + "checkpoint_upload_seconds_bucket", le="5.0"): 2,
    }
    assert {k: got.get(k) for k in expected} == pytest.approx(expected)
    ours = {name for name, _ in got if name.startswith("tunewright_")}
    assert not {n for n in ours if "logps" in n or "eval_samples" in n}, "unknown keys must not be exported"


def test_every_step_is_a_heartbeat_and_the_checkpoint_interval_is_measured(metrics: TrainerMetrics,
                                                                         clock: Clock) -> None:
    start = clock.now
    metrics.started(step=20, total_steps=200, checkpoint_interval_steps=45)  # resumed at step 20
    assert scrape(metrics.port)[key("tunewright_train_last_checkpoint_timestamp_seconds")] == start
    assert key("tunewright_train_checkpoint_interval_seconds") not in scrape(metrics.port)  # nothing measured yet
    for step in (21, 22, 23):  # 2 minutes per step, no logging step among them
        clock.now += 120
        metrics.progressed(step)
    got = scrape(metrics.port)
    # step stays the logged one (20 at the start): step, loss and learning rate come from one record
    assert got[key("tunewright_train_step")] == 20 and got[key("tunewright_train_total_steps")] == 200
    assert got[key("tunewright_train_last_progress_timestamp_seconds")] == start + 360
    assert got[key("tunewright_train_checkpoint_interval_seconds")] == pytest.approx(45 * 120)


def test_an_sft_run_exports_no_reward_gauges_and_exporters_are_independent() -> None:
    first = TrainerMetrics(port=0, labels={**LABELS, "method": "sft"}, addr="127.0.0.1")
    second = TrainerMetrics(port=0, labels={**LABELS, "trainingjob": "other"}, addr="127.0.0.1")
    try:
        first.observe({"step": 3, "loss": 2.5, "grad_norm": None, "learning_rate": "n/a"})
        second.observe({"step": 9, "loss": 1.0})
        got = scrape(first.port)
        names = {name for name, _ in got if name.startswith("tunewright_train_")}
        assert names == {"tunewright_train_step", "tunewright_train_loss"}
        assert got[("tunewright_train_loss", tuple(sorted({**LABELS, "method": "sft"}.items())))] == 2.5
        assert scrape(second.port)[key("tunewright_train_step", trainingjob="other")] == 9
    finally:
        first.close()
        second.close()
    with pytest.raises(urllib.error.URLError):
        scrape(first.port)


def test_no_port_means_no_server() -> None:
    metrics = TrainerMetrics(port=None, labels=LABELS)
    metrics.observe({"step": 1, "loss": 1.0})
    assert metrics.port is None
    assert metrics.registry.get_sample_value("tunewright_train_loss", LABELS) == 1.0
    metrics.close()


def test_readme_documents_every_metric() -> None:
    metrics = TrainerMetrics(port=None, labels=LABELS)
    exported = {m.name for m in metrics.registry.collect()}
    section = re.search(r"<!-- section:metrics -->(.*)<!-- /section:metrics -->", README.read_text(), re.S)
    assert section, "README has no metrics section"
    documented = set(re.findall(r"^\| `(tunewright_\w+)` \|", section.group(1), re.M))
    operator = {"tunewright_operator_jobs", "tunewright_operator_queue_depth",
                "tunewright_operator_reconcile_errors_total", "tunewright_operator_job_duration_seconds"}
    assert documented == exported | operator
