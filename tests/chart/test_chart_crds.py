"""The chart ships the generated CRDs unchanged, and every example is valid for what it is applied to.

Helm installs CRDs only from the chart's own crds/ folder and never templates them, so the chart holds copies
of the top-level crds/ (`make crds` regenerates both; `make chart-crds` copies). Copies rather than symlinks:
`helm package` and git on some systems do not keep symlinks, and a copy is what a packaged chart contains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from support.helm import CHART, ROOT, Helm

CRDS = ROOT / "crds"
EXAMPLES = ROOT / "examples"


def _crd_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.yaml"))}


def _crds() -> dict[str, dict[str, Any]]:
    """kind -> CRD manifest, from the top-level crds/."""
    docs = [yaml.safe_load(text) for text in _crd_files(CRDS).values()]
    return {d["spec"]["names"]["kind"]: d for d in docs}


def test_chart_crds_are_exact_copies_of_the_generated_ones() -> None:
    generated, shipped = _crd_files(CRDS), _crd_files(CHART / "crds")
    assert generated, "crds/ is empty: run `make crds`"
    assert sorted(shipped) == sorted(generated), "run `make chart-crds`"
    stale = [name for name in generated if shipped[name] != generated[name]]
    assert stale == [], f"charts/tunewright/crds/ differs from crds/ in {stale}: run `make chart-crds`"


def test_helm_installs_the_crds_and_they_are_valid(helm: Helm) -> None:
    rendered = [d for d in helm.template(include_crds=True) if d["kind"] == "CustomResourceDefinition"]
    assert {d["metadata"]["name"] for d in rendered} == {
        "trainingjobs.tunewright.dev", "adapters.tunewright.dev", "datasets.tunewright.dev"}
    assert {d["spec"]["names"]["kind"]: d for d in rendered} == _crds()
    for crd in rendered:
        kubernetes_validate.validate(crd, kubernetes_validate.latest_version(), strict=True)
    assert "tj" in _crds()["TrainingJob"]["spec"]["names"]["shortNames"]


def _examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.name)
def test_example_is_valid(path: Path, helm: Helm) -> None:
    from tunewright_operator.models import DatasetSpec, TrainingJobSpec

    if path.name.startswith("values"):
        assert "0 chart(s) failed" in helm.run("lint", str(CHART), "--strict", "--values", str(path)).stdout
        return
    if path.name.startswith("config"):  # a `tunewright-train --config` file: the trainer's own model
        from tunewright.config import load_config

        load_config(path)
        return
    for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
        kind = doc["kind"]
        if kind in ("TrainingJob", "Dataset"):  # the CRD schemas: test_operator_crds.py, on the API server
            model = TrainingJobSpec if kind == "TrainingJob" else DatasetSpec
            model.model_validate(doc["spec"])  # the operator's own validation (defence in depth)
        else:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def _dataset_examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*.jsonl"))


def test_every_example_file_is_checked() -> None:
    """Manifests and config files by test_example_is_valid, dataset files by the test below."""
    assert _dataset_examples()
    assert sorted(EXAMPLES.iterdir()) == sorted(_examples() + _dataset_examples())


@pytest.mark.parametrize("path", _dataset_examples(), ids=lambda p: p.name)
def test_dataset_example_imports(path: Path, tmp_path: Path) -> None:
    """`music-<kind>.jsonl` imports with `--modality audio` once its clips exist (made here as short tones)."""
    import numpy as np
    import soundfile as sf

    from tunewright.data.rows import sample_fields
    from tunewright.data.store import DatasetStore, parse_rows
    from tunewright.storage import open_storage

    kind = path.stem.removeprefix("music-")
    rows = parse_rows(path.read_text().splitlines(), kind, path.name)  # type: ignore[arg-type]
    src = tmp_path / "src"
    for clip in {c for row in rows for c in sample_fields(row)}:
        file = src / clip
        file.parent.mkdir(parents=True, exist_ok=True)
        tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(8_000) / 16_000)
        sf.write(file, tone.astype(np.float32), 16_000, format=file.suffix[1:].upper())
    (src / path.name).write_bytes(path.read_bytes())
    meta = DatasetStore(open_storage(f"file://{tmp_path}/store")).import_file(
        "example", src / path.name, kind, modality="audio")  # type: ignore[arg-type]
    assert (meta.kind, meta.modality, meta.samples) == (kind, "audio", len(rows))


def test_every_method_has_an_example() -> None:
    methods = {d["spec"]["method"] for p in _examples() for d in yaml.safe_load_all(p.read_text())
               if d and d.get("kind") == "TrainingJob"}
    assert methods == {"sft", "dpo", "ranking"}
