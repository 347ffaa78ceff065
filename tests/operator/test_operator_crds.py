"""The CRDs: generated from the pydantic models, current in crds/, structural, and strict where the model is.

Objects are validated by the real API server (a dry-run create against the applied CRDs), so what is tested
here is what `kubectl apply` answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiException, CustomObjectsApi

from support.control_plane import ControlPlane
from tunewright.config import ConfigError, validate
from tunewright_operator import crdgen
from tunewright_operator.models import GROUP, VERSION, TrainingJobSpec

REPO = Path(__file__).resolve().parents[2]
CRDS = crdgen.all_crds()


def schema(filename: str) -> dict[str, Any]:
    return CRDS[filename]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


Errors = Callable[[str, dict[str, Any]], dict[str, str]]


@pytest.fixture
def errors(control_plane: ControlPlane, namespace: str) -> Errors:
    """errors(filename, obj): field path → the API server's message, for every violation of a dry-run create."""
    custom = CustomObjectsApi(control_plane.client())

    def check(filename: str, obj: dict[str, Any]) -> dict[str, str]:
        obj = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, filename.removesuffix(".yaml"), obj,
                                                   dry_run="All", field_validation="Strict")  # as kubectl
        except ApiException as err:
            if err.status == 400:  # strict decoding: `... unknown field "spec.x.y"`
                message = json.loads(err.body)["message"]
                return {message.rsplit('"', 2)[-2]: message}
            if err.status != 422:
                raise
            causes = json.loads(err.body)["details"]["causes"]
            return {c["field"]: c["message"] for c in causes if c.get("field", "<nil>") != "<nil>"}
        return {}

    return check


def tj(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "tunewright.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "x"}, "spec": spec}


@pytest.mark.parametrize("filename", sorted(CRDS))
def test_crds_dir_is_current(filename: str) -> None:
    path = REPO / "crds" / filename
    assert path.exists() and path.read_text() == crdgen.render(CRDS[filename]), \
        f"crds/{filename} is stale: run `make crds`"


def test_readme_reference_is_current() -> None:
    readme = (REPO / "README.md").read_text()
    assert crdgen.replace_section(readme, "trainingjob", crdgen.reference()) == readme, \
        "README's trainingjob section is stale: run `make crds`"


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}.*")


@pytest.mark.parametrize("filename", sorted(CRDS))
def test_schemas_are_structural(filename: str) -> None:
    """What the API server requires of a CRD schema (structural, no refs, bounds in OpenAPI 3.0 form)."""
    for path, node in _nodes(schema(filename)):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path}: no type"
        for banned in ("$ref", "$defs", "anyOf", "title", "const", "allOf"):
            assert banned not in node, f"{path}: {banned}"
        assert not ("properties" in node and "additionalProperties" in node), f"{path}: both properties kinds"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(bound, True) is True, f"{path}: {bound} must be a boolean in OpenAPI 3.0"
        if "default" in node and node.get("enum"):
            assert node["default"] in node["enum"], path


def test_every_model_field_is_in_the_schema() -> None:
    props = schema("trainingjobs.yaml")["properties"]["spec"]["properties"]
    assert set(props) == {f.alias or name for name, f in TrainingJobSpec.model_fields.items()}
    assert props["training"]["properties"]["learningRate"] == {
        "default": 0.0002, "description": "Peak learning rate.", "minimum": 0, "exclusiveMinimum": True,
        "maximum": 1, "type": "number"}
    assert props["baseModelRevision"]["nullable"] is True
    assert props["method"]["enum"] == ["sft", "dpo", "ranking"]
    assert schema("trainingjobs.yaml")["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True
    assert schema("adapters.yaml")["properties"]["spec"]["properties"]["config"] == {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True}


def test_names_and_columns() -> None:
    names = CRDS["trainingjobs.yaml"]["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("TrainingJob", "trainingjobs", ["tj"])
    for filename, crd in CRDS.items():
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        for column in version["additionalPrinterColumns"]:
            parts = column["jsonPath"].strip(".").split(".")
            if parts[0] == "metadata":
                continue
            node = version["schema"]["openAPIV3Schema"]
            for part in parts:
                node = node["properties"][part]
            assert node["type"] == column["type"], f"{filename}: column {column['name']}"
    columns = [c["name"] for c in CRDS["trainingjobs.yaml"]["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns[:4] == ["Phase", "Method", "Steps", "Loss"] and "Age" in columns


def test_examples_validate(errors: Errors) -> None:
    """Every example manifest of ours is accepted by its CRD schema and by the model."""
    plural = {"TrainingJob": "trainingjobs.yaml", "Dataset": "datasets.yaml", "Adapter": "adapters.yaml"}
    seen = 0
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in plural:
                assert errors(plural[doc["kind"]], doc) == {}, path.name
                if doc["kind"] == "TrainingJob":
                    validate(doc["spec"], TrainingJobSpec)
                seen += 1
    assert seen >= 2


def test_a_good_spec_is_accepted(errors: Errors) -> None:
    spec = {"dataset": {"uri": "s3://bucket/datasets/x"}, "method": "dpo", "baseModel": "tiny-llama",
            "training": {"learningRate": 1, "maxSteps": None, "lrScheduler": "cosine"},
            "lora": {"targetModules": ["q_proj"], "dropout": 0.0}, "earlyStopping": {"patience": 2},
            "dpo": {"labelSmoothing": 0},  # a whole number under a fractional exclusive maximum (see crdgen)
            "resources": {"gpus": 2, "memory": "32Gi", "nodeSelector": {"a": "b"},
                          "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]},
            "storage": {"uri": "s3://bucket/p", "secretName": "s3"}, "retries": 0, "suspend": True, "priority": 5}
    assert errors("trainingjobs.yaml", tj(spec)) == {}
    validate(spec, TrainingJobSpec)


@pytest.mark.parametrize(("spec", "path", "words"), [
    ({"training": {"learningRate": 0}}, "spec.training.learningRate", "should be greater than 0"),
    ({"training": {"learningRate": 1.5}}, "spec.training.learningRate", "should be less than or equal to 1"),
    ({"lora": {"rank": 0}}, "spec.lora.rank", "should be greater than or equal to 1"),
    ({"lora": {"dropout": 1}}, "spec.lora.dropout", "should be less than 1"),
    ({"dpo": {"labelSmoothing": 0.5}}, "spec.dpo.labelSmoothing", "must be less than 0.5"),
    ({"training": {"epochs": 1.5}}, "spec.training.epochs", "must be of type integer"),
    ({"method": "ppo"}, "spec.method", 'supported values: "sft", "dpo", "ranking"'),
    ({"retries": -1}, "spec.retries", "should be greater than or equal to 0"),
    ({"resources": {"gpus": 65}}, "spec.resources.gpus", "should be less than or equal to 64"),
    ({"name": "Bad_Name"}, "spec.name", "should match"),
    ({"storage": {"uri": "http://x"}}, "spec.storage.uri", "should match"),
    ({"lora": {"rnak": 8}}, "spec.lora.rnak", 'unknown field "spec.lora.rnak"'),
])
def test_out_of_range_is_rejected_naming_the_field(errors: Errors, spec: dict[str, Any], path: str,
                                                   words: str) -> None:
    full = {"dataset": {"id": "songs"}, **spec}
    found = errors("trainingjobs.yaml", tj(full))
    assert list(found) == [path] and words in found[path]
    with pytest.raises(ConfigError, match=path.removeprefix("spec.").replace(".", r"\.")):
        validate(full, TrainingJobSpec)


def test_dataset_needs_exactly_one_of_id_and_uri(errors: Errors) -> None:
    for dataset in ({}, {"id": "a", "uri": "s3://b/c"}):
        assert errors("trainingjobs.yaml", tj({"dataset": dataset})) == {
            "spec.dataset": "Invalid value: set exactly one of dataset.id or dataset.uri"}
    assert errors("trainingjobs.yaml", tj({})) == {"spec.dataset": "Required value"}


def test_every_numeric_bound_matches_the_model(errors: Errors) -> None:
    """Just outside each bound in the schema: the schema and pydantic both refuse, naming the same field."""
    checked = 0
    for path, node in _nodes(schema("trainingjobs.yaml")["properties"]["spec"], "spec"):
        for bound, step in (("minimum", -1), ("maximum", 1)):
            if bound not in node or node.get("type") not in ("integer", "number"):
                continue
            outside = node[bound] + step * (1 if node["type"] == "integer" else 1e-6)
            value = node[bound] if crdgen.exclusive(node, bound) else outside
            spec: dict[str, Any] = {"dataset": {"id": "songs"}}
            leaf = spec
            *parents, name = path.removeprefix("spec.").split(".")
            for part in parents:
                leaf = leaf.setdefault(part, {})
            leaf[name] = value
            assert path in errors("trainingjobs.yaml", tj(spec)), (path, value)
            with pytest.raises(ConfigError, match=name):
                validate(spec, TrainingJobSpec)
            checked += 1
    assert checked > 30


def test_generator_writes_files_and_readme(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- section:trainingjob -->\nSTALE TEXT\n<!-- /section:trainingjob -->\n")
    out = subprocess.run([sys.executable, "-m", "tunewright_operator.crdgen", str(tmp_path / "crds"), "--readme",
                          str(readme)], capture_output=True, text=True, check=True)
    assert "trainingjobs.yaml" in out.stdout
    assert sorted(p.name for p in (tmp_path / "crds").iterdir()) == sorted(CRDS)
    assert "| `spec.training.learningRate` | number | `0.0002` | > 0, ≤ 1 |" in readme.read_text()
    assert "STALE TEXT" not in readme.read_text()


def test_operator_does_not_import_torch() -> None:
    code = ("import sys, tunewright_operator.handlers, tunewright_operator.__main__, tunewright_operator.crdgen; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_only_suspend_priority_and_retries_change_after_creation(control_plane: ControlPlane, namespace: str) -> None:
    """Edits the operator could not honour (the trainer's config is written once) are refused at the API server."""
    custom = CustomObjectsApi(control_plane.client())
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs",
                                           tj({"dataset": {"id": "songs"}, "training": {"maxSteps": 5}}))

    def patch(spec: dict[str, Any]) -> str:
        try:
            custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs", "x", {"spec": spec})
        except ApiException as err:
            assert err.status == 422
            return json.loads(err.body)["message"]
        return ""

    for allowed in ({"suspend": True}, {"priority": 5}, {"retries": 1}):
        assert patch(allowed) == ""
    for field, value in (("training", {"maxSteps": 50}), ("image", "other:1"), ("resources", {"cpu": "2"}),
                         ("method", "dpo"), ("storage", {"uri": "s3://b/p"})):
        message = patch({field: value})
        assert f"spec.{field}: Forbidden: spec.{field} cannot change once the TrainingJob exists" in message, message
        assert "create a new TrainingJob" in message
