"""Monitoring assets: every PromQL name is exported by the code, the alerts behave (promtool unit tests),
and the monitors select what the chart and the operator really run."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_metrics import TARGET_LABELS, exported_series
from chart_promql import LEGEND_LABEL, TEMPLATE_LABEL, references

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


def test_dashboard_uses_only_exported_metrics_and_labels(dashboard: dict[str, Any]) -> None:
    problems = []
    for target in _targets(dashboard):
        problems += _check(target["expr"], set(LEGEND_LABEL.findall(target["legendFormat"])), target["expr"][:60])
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":  # label_values(<selector>, <label>)
            selector, label = var["query"]["query"].removeprefix("label_values(").removesuffix(")").rsplit(",", 1)
            problems += _check(selector, {label.strip()}, f"variable {var['name']}")
    assert problems == []


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
                                                tmp_path: Path) -> None:
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool not obtainable here (Debian package `prometheus`); rule names still checked above")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": one(docs, "PrometheusRule")["spec"]["groups"]}))
    shutil.copy(HERE / "alerts_test.yaml", tmp_path)
    check = subprocess.run([str(promtool), "check", "rules", "rules.yaml"], cwd=tmp_path,
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0 and f"SUCCESS: {len(rules)} rules found" in check.stdout, check.stdout + check.stderr
    unit = subprocess.run([str(promtool), "test", "rules", "alerts_test.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


def test_rule_thresholds_follow_values(helm: Helm) -> None:
    values = {"metrics": {"prometheusRule": {"enabled": True, "noProgressMinutes": 7, "checkpointAgeMinutes": 90}}}
    rules = {r["alert"]: r for g in one(helm.template(values), "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    assert "changes(tunewright_train_step[7m]) == 0" in rules["TunewrightTrainingStalled"]["expr"]
    assert "> 5400" in rules["TunewrightCheckpointStale"]["expr"]
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

