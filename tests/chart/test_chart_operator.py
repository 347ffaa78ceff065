"""The chart against the operator's code: RBAC equals the API calls in its source, the PodMonitor selects the
trainer pods it builds, and those pods meet the restricted Pod Security Standard like the operator's own."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from chart_rbac import LEASE, granted_permissions, required_permissions

from support.helm import ROOT, Helm, find, one
from support.pss import restricted_violations

PACKAGE = ROOT / "operator" / "tunewright_operator"


@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["ml", "ml-staging"]}], ids=["cluster", "namespaced"])
def test_rbac_grants_exactly_what_the_operator_calls(helm: Helm, values: dict[str, Any]) -> None:
    docs = helm.template(values)
    kind = "Role" if values else "ClusterRole"
    (election,) = find(docs, "Role", "-leader-election")  # in the release namespace: the operator's Lease
    assert election["metadata"]["namespace"] == "tunewright-system"
    assert granted_permissions(election["rules"]) == LEASE
    required = required_permissions(PACKAGE) - LEASE
    roles = [r for r in find(docs, kind) if r is not election]
    assert len(roles) == len(values.get("watchNamespaces", [None]))
    for role in roles:
        granted = granted_permissions(role["rules"])
        assert not {p for p in granted if "*" in p}, "no wildcard groups, resources or verbs"
        assert sorted(required - granted) == [], "the operator would be forbidden these calls"
        assert sorted(granted - required) == [], "granted but never used by the operator"


def test_rbac_analysis_sees_new_calls(tmp_path: Path) -> None:
    """The source analysis is what keeps the Role honest: prove it notices calls it was not told about."""
    (tmp_path / "kube.py").write_text(textwrap.dedent('''
        GROUP = "example.dev"
        WIDGETS = "widgets"
        class Kube:
            def drop_config(self, namespace, name):
                self.core.delete_namespaced_config_map(name, namespace)
            def widgets(self, plural, namespace):
                return self.custom.list_namespaced_custom_object(GROUP, "v1", namespace, plural)
            def unused(self):
                self.core.delete_collection_namespaced_pod("ns")
    '''))
    (tmp_path / "handlers.py").write_text(textwrap.dedent('''
        import kopf
        from kube import WIDGETS
        def register(kube):
            @kopf.on.update("v1", "services")
            def changed(**_): kube.drop_config("ns", "x")
            @kopf.on.event("example.dev", "v1", WIDGETS)
            def seen(**_): kube.widgets(WIDGETS, "ns")
    '''))
    assert required_permissions(tmp_path) == {
        ("", "configmaps", "delete"), ("example.dev", "widgets", "list"), ("example.dev", "widgets", "watch"),
        ("", "services", "list"), ("", "services", "watch"), ("", "services", "patch"), ("", "events", "create"),
    }


def _trainer_pod(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The operator's pod for examples/trainingjob-sft.yaml (1 GPU), its settings from `env` (the chart's)."""
    import yaml

    from tunewright_operator import pods
    from tunewright_operator.models import TrainingJobSpec
    from tunewright_operator.settings import Settings

    tj = yaml.safe_load((ROOT / "examples" / "trainingjob-sft.yaml").read_text())
    tj["metadata"]["uid"] = "0b8d5f4e-6f7a-4c1e-9a53-0f4c3b3a2d11"
    spec = TrainingJobSpec.model_validate(tj["spec"])
    settings = Settings.parse([], env or {})
    return pods.pod(tj, spec, 1, "ml-support-replies-sft-0b8d5f4e", "s3://tunewright", settings)


def test_gpu_placement_values_land_on_the_trainer_pods(helm: Helm) -> None:
    """examples/values-cluster.yaml's GPU node selector and tolerations, merged with the example job's own."""
    deployment = one(helm.template(None, ROOT / "examples" / "values-cluster.yaml"), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("TUNEWRIGHT_GPU_")}
    spec = _trainer_pod(env)["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
                                    "nvidia.com/gpu.present": "true"}
    assert spec["tolerations"] == [  # the job's own nvidia.com/gpu toleration equals the first: once
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}]


def test_pod_monitor_selects_the_trainer_pods_the_operator_creates(helm: Helm) -> None:
    pod = _trainer_pod()
    monitor = one(helm.template({"metrics": {"podMonitor": {"enabled": True}}}), "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert ports[endpoint["port"]] == 9400


def test_trainer_pods_meet_the_restricted_pod_security_standard() -> None:
    assert restricted_violations(_trainer_pod()["spec"]) == []


def test_pss_checker_rejects_what_the_standard_forbids() -> None:
    pod = {"hostNetwork": True, "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
           "containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]}
    problems = restricted_violations(pod)
    for expected in ("hostNetwork: true", "volume h: type hostPath is not allowed",
                     "container c: allowPrivilegeEscalation must be false", "container c: runAsNonRoot must be true",
                     "container c: capabilities.drop must include ALL"):
        assert expected in problems
    assert any("seccompProfile" in p for p in problems) and any("SYS_ADMIN" in p for p in problems)


def _operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("TUNEWRIGHT_") and "value" in e}


def test_trainer_pods_get_the_charts_pull_settings_and_a_tokenless_service_account(helm: Helm) -> None:
    values = {"watchNamespaces": ["ml", "ml-staging"],
              "trainer": {"imagePullPolicy": "Always", "imagePullSecrets": [{"name": "regcred"}]}}
    docs = helm.template(values)
    accounts = [d for d in find(docs, "ServiceAccount", "-trainer")]
    assert [(a["metadata"]["namespace"], a["automountServiceAccountToken"]) for a in accounts] == [
        ("ml", False), ("ml-staging", False)]
    pod = _trainer_pod(_operator_env(docs))
    (container,) = pod["spec"]["containers"]
    assert container["imagePullPolicy"] == "Always"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["serviceAccountName"] == accounts[0]["metadata"]["name"] == "tw-tunewright-trainer"
    assert pod["spec"]["automountServiceAccountToken"] is False
    # all namespaces: the chart cannot create accounts everywhere; trainer pods keep their namespace's default
    docs = helm.template({"trainer": {"imagePullSecrets": [{"name": "regcred"}]}})
    assert not find(docs, "ServiceAccount", "-trainer")
    pod = _trainer_pod(_operator_env(docs))
    assert "serviceAccountName" not in pod["spec"] and pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    named = _trainer_pod(_operator_env(helm.template({"trainer": {"serviceAccount": {"name": "trainer"}}})))
    assert named["spec"]["serviceAccountName"] == "trainer"


@pytest.mark.parametrize("pod_monitor", [True, False])
def test_trainer_pods_are_scraped_one_way_only(helm: Helm, pod_monitor: bool) -> None:
    docs = helm.template({"metrics": {"podMonitor": {"enabled": pod_monitor}}})
    annotations = _trainer_pod(_operator_env(docs))["metadata"].get("annotations", {})
    assert bool(find(docs, "PodMonitor")) == pod_monitor
    assert ("prometheus.io/scrape" in annotations) != pod_monitor
