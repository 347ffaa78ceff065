"""helm lint / helm template with default and real-cluster values, validated against Kubernetes schemas."""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from typing import Any

import kubernetes_validate
import pytest

from support.helm import CHART, ROOT, Helm, find, one
from support.pss import restricted_violations

CLUSTER_VALUES = ROOT / "examples" / "values-cluster.yaml"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.25", kubernetes_validate.latest_version())
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


@pytest.mark.parametrize("files", [(), (CLUSTER_VALUES,)], ids=["defaults", "cluster"])
def test_helm_lint_strict_passes(helm: Helm, files: tuple[Any, ...]) -> None:
    args = [arg for f in files for arg in ("--values", str(f))]
    done = helm.run("lint", str(CHART), "--strict", *args)
    assert "0 chart(s) failed" in done.stdout


def _validate_builtin(docs: list[dict[str, Any]]) -> set[str]:
    checked = set()
    for doc in docs:
        if doc["kind"] in MONITORING_KINDS or doc["kind"] == "CustomResourceDefinition":
            continue  # no bundled schema; checked by content in test_monitoring.py / test_crds.py
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        checked.add(doc["kind"])
    return checked


def test_default_render_is_schema_valid_and_minimal(helm: Helm) -> None:
    docs = helm.template()
    kinds = _validate_builtin(docs)
    assert kinds == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service",
                     "Deployment"}  # the Role: the leader-election Lease
    assert [r["metadata"]["name"] for r in find(docs, "Role")] == ["tw-tunewright-leader-election"]
    assert not {d["kind"] for d in docs} & MONITORING_KINDS, "monitoring objects must be opt-in"


def test_cluster_values_render_is_schema_valid(helm: Helm) -> None:
    docs = helm.template(None, CLUSTER_VALUES)
    kinds = _validate_builtin(docs)
    assert {"Role", "RoleBinding", "ConfigMap", "Deployment"} <= kinds
    assert {d["kind"] for d in docs} >= MONITORING_KINDS
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container


def test_operator_runs_one_replica_with_health_probes(helm: Helm) -> None:
    docs = helm.template()
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = _container(docs)
    assert container["command"] == ["python", "-m", "tunewright_operator"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9090, "health": 8080}
    env = _env(docs)
    assert (env["TUNEWRIGHT_METRICS_PORT"], env["TUNEWRIGHT_HEALTH_PORT"]) == ("9090", "8080")
    assert container["image"] == "tunewright/operator:0.1.0"


def test_watch_namespaces_become_the_operator_setting_and_namespaced_roles(helm: Helm) -> None:
    docs = helm.template({"watchNamespaces": ["ml", "ml-staging"]})
    assert _env(docs)["TUNEWRIGHT_NAMESPACES"] == "ml,ml-staging"
    lease = next(e for e in _container(docs)["env"] if e["name"] == "TUNEWRIGHT_LEASE_NAMESPACE")
    assert lease["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}  # the Role's namespace
    roles = {r["metadata"]["namespace"] for r in find(docs, "Role") if not r["metadata"]["name"].endswith("-election")}
    bindings = [b for b in find(docs, "RoleBinding") if not b["metadata"]["name"].endswith("-election")]
    assert roles == {b["metadata"]["namespace"] for b in bindings} == {"ml", "ml-staging"}
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tw-tunewright",
                                        "namespace": "tunewright-system"}]


def _env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in _container(docs)["env"] if "value" in e}


def test_settings_reach_the_operator_as_environment(helm: Helm) -> None:
    docs = helm.template(None, CLUSTER_VALUES)
    env = _env(docs)
    assert env["TUNEWRIGHT_MAX_CONCURRENT_JOBS"] == "4"
    assert env["TUNEWRIGHT_IMAGE"] == "registry.example.com/tunewright/trainer:0.1.0"
    assert env["TUNEWRIGHT_NAMESPACES"] == "ml,ml-staging"
    assert env["TUNEWRIGHT_STORAGE"] == "s3://tunewright"
    assert env["TUNEWRIGHT_GRACE_SECONDS"] == "600"
    assert json.loads(env["TUNEWRIGHT_GPU_NODE_SELECTOR"]) == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert json.loads(env["TUNEWRIGHT_GPU_TOLERATIONS"]) == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}]
    assert env["AWS_ENDPOINT_URL_S3"] == "https://minio.storage.svc:9000"
    assert _container(docs)["envFrom"] == [{"secretRef": {"name": "tunewright-s3"}}]
    defaults = _env(helm.template())
    assert "TUNEWRIGHT_STORAGE" not in defaults and "TUNEWRIGHT_NAMESPACES" not in defaults
    assert "envFrom" not in _container(helm.template())


def test_every_variable_the_chart_sets_is_an_operator_setting(helm: Helm) -> None:
    from tunewright_operator.settings import Settings

    settings = {Settings.env_name(f.name): f for f in dataclasses.fields(Settings)}
    env = _env(helm.template(None, CLUSTER_VALUES))
    tunewright = {name for name in env if name.startswith("TUNEWRIGHT_")}
    assert tunewright - set(settings) == set(), "the operator would ignore these"
    assert set(env) - tunewright <= {"AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"}  # read by boto3 itself
    parsed = Settings.parse([], {k: v for k, v in env.items() if k in tunewright})
    assert parsed.max_concurrent_jobs == 4 and parsed.namespaces == ("ml", "ml-staging")
    assert parsed.image == "registry.example.com/tunewright/trainer:0.1.0" and parsed.grace_seconds == 600
    assert parsed.termination_margin_seconds == 60
    assert (parsed.metrics_port, parsed.health_port) == (9090, 8080)
    assert parsed.gpu_node_selector == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert [t["key"] for t in parsed.gpu_tolerations] == ["nvidia.com/gpu", "dedicated"]


@pytest.mark.parametrize(("values", "selector", "tolerations"), [
    ({}, {}, [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]),
    ({"trainer": {"gpuNodeSelector": {"pool": "gpu"}, "gpuTolerations": []}}, {"pool": "gpu"}, []),
    ({"trainer": {"gpuTolerations": [{"key": "gpu", "operator": "Equal", "value": "h100",
                                      "effect": "NoExecute", "tolerationSeconds": 60}]}},
     {}, [{"key": "gpu", "operator": "Equal", "value": "h100", "effect": "NoExecute", "tolerationSeconds": 60}]),
], ids=["defaults", "selector-no-tolerations", "own-toleration"])
def test_gpu_placement_values_reach_the_operator_as_json(helm: Helm, values: dict[str, Any],
                                                         selector: dict[str, str],
                                                         tolerations: list[dict[str, Any]]) -> None:
    from tunewright_operator.settings import Settings

    env = _env(helm.template(values))
    gpu = {k: v for k, v in env.items() if k.startswith("TUNEWRIGHT_GPU_")}
    assert (json.loads(gpu["TUNEWRIGHT_GPU_NODE_SELECTOR"]), json.loads(gpu["TUNEWRIGHT_GPU_TOLERATIONS"])) == (
        selector, tolerations)
    parsed = Settings.parse([], gpu)
    assert (parsed.gpu_node_selector, list(parsed.gpu_tolerations)) == (selector, tolerations)
    if not values:
        default = Settings()
        assert (parsed.gpu_node_selector, parsed.gpu_tolerations) == (
            default.gpu_node_selector, default.gpu_tolerations), "chart and operator defaults agree"


def test_gpu_toleration_schema_matches_the_job_spec_toleration() -> None:
    from tunewright.config import Toleration

    schema = json.loads((CHART / "values.schema.json").read_text())
    item = schema["properties"]["trainer"]["properties"]["gpuTolerations"]["items"]
    assert set(item["properties"]) == {f.alias for f in Toleration.model_fields.values()}


def test_operator_pod_meets_the_restricted_pod_security_standard(helm: Helm) -> None:
    pod = one(helm.template(None, CLUSTER_VALUES), "Deployment")["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert _container(helm.template())["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize(("values", "message"), [
    ({"maxConcurrentJobs": 0}, "/maxConcurrentJobs': minimum: got 0, want 1"),
    ({"watchNamespaces": ["Not_A_Namespace"]}, "/watchNamespaces/0"),
    ({"storage": {"uri": "gs://bucket"}}, "/storage/uri"),
    ({"metrics": {"podMonitr": {"enabled": True}}}, "additional properties 'podMonitr' not allowed"),
    ({"metrics": {"prometheusRule": {"noProgressMinutes": "15m"}}}, "/metrics/prometheusRule/noProgressMinutes"),
    ({"trainer": {"gpuTolerations": [{"key": "gpu", "operator": "Maybe"}]}}, "/trainer/gpuTolerations/0/operator"),
    ({"trainer": {"gpuNodeSelector": {"gpus": 1}}}, "/trainer/gpuNodeSelector/gpus"),
    ({"trainer": {"imagePullPolicy": "Sometimes"}}, "/trainer/imagePullPolicy"),
    ({"trainer": {"imagePullSecrets": ["regcred"]}}, "/trainer/imagePullSecrets/0"),
])
def test_bad_values_fail_with_the_field_named(helm: Helm, values: dict[str, Any], message: str) -> None:
    import tempfile

    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(values, f)
        done = helm.run("template", "tw", str(CHART), "--values", f.name, check=False)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_chart_version_matches_the_package() -> None:
    import tomllib

    import yaml

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


def test_chart_works_as_a_subchart_with_global_values_and_name_overrides(helm: Helm) -> None:
    docs = helm.template({"global": {"imageRegistry": "registry.example.com"}, "fullnameOverride": "tuner"})
    assert one(docs, "Deployment")["metadata"]["name"] == "tuner"
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["name"] == one(docs, "ServiceAccount")["metadata"]["name"]
    renamed = helm.template({"nameOverride": "lora"}, release="ml")
    deployment = one(renamed, "Deployment")
    assert deployment["metadata"]["name"] == "ml-lora"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "lora"
    assert one(renamed, "Service")["spec"]["selector"].items() <= labels.items()


def test_security_contexts_are_values_with_restricted_defaults(helm: Helm) -> None:
    pod = one(helm.template(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert restricted_violations(pod) == []  # the image's numeric USER 65532 satisfies runAsNonRoot
    openshift = {"runAsNonRoot": True, "runAsUser": 1000680000, "seccompProfile": {"type": "RuntimeDefault"}}
    pod = one(helm.template({"operator": {"podSecurityContext": openshift}}), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == openshift
    # helm merges a value into the default map: one key changes, the others stay
    assert _container(helm.template({"operator": {"securityContext": {"readOnlyRootFilesystem": False}}}))[
        "securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": False,
                               "capabilities": {"drop": ["ALL"]}}


def test_notes_query_fields_that_exist_and_show_a_valid_job(helm: Helm) -> None:
    import yaml

    from tunewright_operator.models import TrainingJobSpec

    done = helm.run("install", "tw", str(CHART), "--dry-run=client", "--namespace", "tunewright-system")
    notes = done.stdout.split("NOTES:\n", 1)[1]
    adapter_crd = yaml.safe_load((CHART / "crds" / "adapters.yaml").read_text())
    spec_fields = adapter_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    queried = re.findall(r"\{\.spec\.(\w+)\}", notes)
    assert queried and set(queried) <= set(spec_fields)
    assert "examples/" not in notes, "the chart does not ship the repository's examples"
    manifest = re.search(r"<<'EOF'\n(.*?)\n\s*EOF", notes, re.S)
    assert manifest
    job = yaml.safe_load(textwrap.dedent(manifest.group(1)))
    assert job["kind"] == "TrainingJob"
    TrainingJobSpec.model_validate(job["spec"])


def test_values_describe_the_queue_order_the_operator_implements(helm: Helm) -> None:
    from tunewright_operator import queue

    def job(name: str, priority: int, created: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": "ml", "creationTimestamp": created},
                "spec": {"priority": priority}, "status": {"phase": "Queued"}}

    jobs = [job("old-low", 0, "2026-01-01T00:00:00Z"), job("new-high", 5, "2026-01-03T00:00:00Z"),
            job("old-high", 5, "2026-01-02T00:00:00Z")]
    assert [tj["metadata"]["name"] for tj in sorted(jobs, key=queue.order)] == ["old-high", "new-high", "old-low"]
    values = (CHART / "values.yaml").read_text()
    assert "in order of spec.priority (higher first), then creation time (older first)" in values
    assert "priority class" not in values
