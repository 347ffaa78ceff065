"""Monitoring assets: every PromQL name is exported by the code, the alerts behave (promtool unit tests),
and the monitors select what the chart and the operator really run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_metrics import TARGET_LABELS, exported_series
from chart_promql import LEGEND_LABEL, TEMPLATE_LABEL, references
from prometheus_client.parser import text_string_to_metric_families
from promtool_series import input_series

from support.helm import Helm, one, tool

ALL_ON = {"metrics": {k: {"enabled": True} for k in ("serviceMonitor", "podMonitor", "prometheusRule", "dashboard")}}
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def docs(helm: Helm) -> list[dict[str, Any]]:
    return helm.template(ALL_ON)


@pytest.fixture(scope="module")
def rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in one(docs, "PrometheusRule")["spec"]["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard(docs: list[dict[str, Any]]) -> dict[str, Any]:
    configmap = one(docs, "ConfigMap", "-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    return json.loads(configmap["data"]["tunewright.json"])


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """{source: [/metrics text at minute 0, 1, ...]} scraped from the real exporters (capture_metrics.py),
    in a process of its own: a fresh operator start, and no metrics left behind in this one."""
    out = tmp_path_factory.mktemp("capture") / "recording.json"
    done = subprocess.run([sys.executable, str(HERE / "capture_metrics.py"), str(out)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == name}


def test_operator_exports_every_label_set_at_zero_from_start_up(recording: dict[str, list[str]]) -> None:
    first = recording["operator"][0]
    assert _samples(first, "tunewright_operator_reconcile_errors_total") == {
        (("handler", h),): 0.0 for h in ("trainingjob", "pod", "poll", "dataset")}
    assert _samples(first, "tunewright_operator_job_duration_seconds_count") == {
        (("method", m), ("outcome", o)): 0.0 for m in ("sft", "dpo", "ranking") for o in ("succeeded", "failed")}
    after = recording["operator"][-1]
    assert _samples(after, "tunewright_operator_reconcile_errors_total")[(("handler", "trainingjob"),)] == 1
    assert _samples(after, "tunewright_operator_job_duration_seconds_count")[
        (("method", "dpo"), ("outcome", "failed"))] == 1


def test_trainer_heartbeat_moves_at_every_step_not_only_at_logging_steps(recording: dict[str, list[str]]) -> None:
    def value(minute: int, name: str) -> float | None:
        return next(iter(_samples(recording["slow"][minute], name).values()), None)

    # slow: a step every 2 minutes, a log line every 10 steps (the first at minute 20)
    assert value(18, "tunewright_train_loss") is None
    assert [value(m, "tunewright_train_step") for m in (0, 2, 18, 20)] == [0, 0, 0, 10]  # as logged
    assert [value(m, "tunewright_train_last_progress_timestamp_seconds") for m in (1, 2, 18)] == [0, 120, 1080]
    assert value(18, "tunewright_train_checkpoint_interval_seconds") == 45 * 120  # one 45-step epoch


def _targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for p in dashboard["panels"] for t in p.get("targets", [])]


def _check(expr: str, extra_labels: set[str], where: str) -> list[str]:
    """Problems with one expression: unknown metric names, or labels none of its metrics carry."""
    series = exported_series()
    metrics, labels = references(expr)
    problems = [f"{where}: metric {m} is not exported by the trainer or the operator"
                for m in sorted(metrics - set(series))]
    known = TARGET_LABELS.union(*(series.get(m, set()) for m in metrics))
    problems += [f"{where}: label {lbl} is not on {sorted(metrics)}" for lbl in sorted((labels | extra_labels) - known)]
    return problems


def test_alert_rules_use_only_exported_metrics_and_labels(rules: list[dict[str, Any]]) -> None:
    problems = []
    for rule in rules:
        used = {lbl for text in rule["annotations"].values() for lbl in TEMPLATE_LABEL.findall(text)}
        problems += _check(rule["expr"], used, rule["alert"])
    assert problems == []
    assert {r["alert"] for r in rules} >= {"TunewrightTrainingLossNaN", "TunewrightTrainingStalled",
                                           "TunewrightTrainingJobFailed", "TunewrightCheckpointStale"}


def test_every_alert_links_its_readme_runbook(rules: list[dict[str, Any]]) -> None:
    readme = (HERE.parents[1] / "README.md").read_text()
    runbooks = readme.split("\n## Alert runbooks\n", 1)[1].split("\n## ", 1)[0]
    sections = {line.removeprefix("### ").lower() for line in runbooks.splitlines() if line.startswith("### ")}
    links = {r["alert"]: r["annotations"].get("runbook_url", "") for r in rules}
    assert {a: u.rsplit("#", 1)[-1] for a, u in links.items()} == {a: a.lower() for a in links}
    assert {a.lower() for a in links} <= sections
    assert all(u.startswith("https://tunewright.dev/README.md#") for u in links.values())


def test_dashboard_uses_only_exported_metrics_and_labels(dashboard: dict[str, Any]) -> None:
    problems = []
    for target in _targets(dashboard):
        problems += _check(target["expr"], set(LEGEND_LABEL.findall(target["legendFormat"])), target["expr"][:60])
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":  # label_values(<selector>, <label>)
            selector, label = var["query"]["query"].removeprefix("label_values(").removesuffix(")").rsplit(",", 1)
            problems += _check(selector, {label.strip()}, f"variable {var['name']}")
    assert problems == []


def test_dashboard_is_current_and_its_gauges_are_bounded(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 41  # Grafana 12
    gauges = [p for p in dashboard["panels"] if p["type"] in ("gauge", "bargauge")]
    assert gauges
    for panel in gauges:
        defaults = panel["fieldConfig"]["defaults"]
        assert isinstance(defaults.get("min"), int | float) and isinstance(defaults.get("max"), int | float), \
            panel["title"]


def test_the_checker_catches_unknown_names() -> None:
    assert _check("rate(tunewright_train_steps[5m])", set(), "x") == [
        "x: metric tunewright_train_steps is not exported by the trainer or the operator"]
    assert _check("sum by (gpu) (tunewright_train_loss)", set(), "y") == [
        "y: label gpu is not on ['tunewright_train_loss']"]


def test_dashboard_shows_what_the_issue_asks_for(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(t["expr"] for t in _targets(dashboard))
    for metric in ("tunewright_train_loss", "tunewright_train_eval_loss", "tunewright_train_learning_rate",
                   "tunewright_train_grad_norm", "tunewright_train_samples_per_second",
                   "tunewright_train_tokens_per_second", "tunewright_train_reward_accuracy",
                   "tunewright_operator_jobs", "tunewright_operator_queue_depth"):
        assert metric in exprs
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(t["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for t in _targets(dashboard))


def test_alerts_fire_as_intended_under_promtool(rules: list[dict[str, Any]], docs: list[dict[str, Any]],
                                                recording: dict[str, list[str]], tmp_path: Path) -> None:
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool not obtainable here (Debian package `prometheus`); rule names still checked above")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": one(docs, "PrometheusRule")["spec"]["groups"]}))
    tests = yaml.safe_load((HERE / "alerts_test.yaml").read_text())
    for test in tests["tests"]:
        if "captured" in test:
            test["input_series"] = [s for source in test.pop("captured") for s in input_series(recording[source])]
    (tmp_path / "alerts_test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    check = subprocess.run([str(promtool), "check", "rules", "rules.yaml"], cwd=tmp_path,
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0 and f"SUCCESS: {len(rules)} rules found" in check.stdout, check.stdout + check.stderr
    unit = subprocess.run([str(promtool), "test", "rules", "alerts_test.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


def test_rule_thresholds_follow_values(helm: Helm) -> None:
    values = {"metrics": {"prometheusRule": {"enabled": True, "noProgressMinutes": 7, "checkpointAgeMinutes": 90}}}
    rules = {r["alert"]: r for g in one(helm.template(values), "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    assert "tunewright_train_last_progress_timestamp_seconds > 420" in rules["TunewrightTrainingStalled"]["expr"]
    assert "tunewright_train_checkpoint_interval_seconds, 5400)" in rules["TunewrightCheckpointStale"]["expr"]
    assert "TunewrightOperatorAbsent" not in rules  # only alert on absence when the operator is scraped


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_service_monitor_reaches_the_operator_metrics_port(docs: list[dict[str, Any]]) -> None:
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service", "-metrics")
    deployment = one(docs, "Deployment")
    assert _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    assert _matches(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert _matches(deployment["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = service["spec"]["ports"]
    assert endpoint["port"] == port["name"] == port["targetPort"] == "metrics"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container_ports["metrics"] == port["port"] == 9090


def test_pod_monitor_scrapes_trainer_pods_in_watched_namespaces(helm: Helm, docs: list[dict[str, Any]]) -> None:
    monitor = one(docs, "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["honorLabels"] is True
    scoped = one(helm.template({"watchNamespaces": ["ml"], **ALL_ON}), "PodMonitor")
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}

