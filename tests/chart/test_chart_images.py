"""The Dockerfiles, without a Docker engine: hadolint, the same install commands as the Makefile, no torch in
the operator's dependency tree, non-root users, and entrypoints that agree with the chart."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from support.helm import ROOT

TRAINER = ROOT / "trainer-image" / "Dockerfile"
OPERATOR = ROOT / "operator" / "Dockerfile"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def _args(path: Path) -> dict[str, str]:
    return dict(a.split("=", 1) for op, a in _instructions(path) if op == "ARG" and "=" in a)


def _pip_installs(commands: list[str], variables: dict[str, str]) -> list[list[str]]:
    """The package arguments of each `pip install` in shell command lines, flags and quotes removed."""
    installs = []
    for command in commands:
        expanded = re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), command)
        lexer = shlex.shlex(expanded, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        words: list[str] = []
        for word in [*lexer, ";"]:
            if word not in (";", "&&", "||", "|"):
                words.append(word)
                continue
            if words[1:4] == ["-m", "pip", "install"]:
                installs.append([w for w in words[4:] if not w.startswith("-")])
            words = []
    return installs


def _makefile_installs() -> list[list[str]]:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "Makefile has no $(STAMP) install recipe"
    return [i for i in _pip_installs(recipe.group(1).splitlines(), {}) if i != ["pip"]]


def _dockerfile_installs(path: Path) -> list[list[str]]:
    """The dependency layer's installs; the last install must be the sources alone (`--no-deps .`), so that a
    change to them does not rebuild the dependencies."""
    runs = [a for op, a in _instructions(path) if op == "RUN"]
    *dependencies, sources = _pip_installs(runs, _args(path))
    assert sources == ["."] and any("pip install --no-cache-dir --no-deps ." in r for r in runs), "sources alone"
    return dependencies


def _only_extras(installs: list[list[str]], keep: set[str]) -> list[list[str]]:
    """The Makefile's installs as an image needs them: the project with only the `keep` extras."""
    out = []
    for packages in installs:
        kept = []
        for spec in packages:
            if spec.startswith(".["):
                extras = [e for e in spec[2:-1].split(",") if e in keep]
                kept.append(f".[{','.join(extras)}]")
            else:
                kept.append(spec)
        out.append(kept)
    return out


def test_trainer_image_installs_exactly_what_the_makefile_installs() -> None:
    assert _dockerfile_installs(TRAINER) == _only_extras(_makefile_installs(), {"trainer"})
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["trainer"]
    assert f"torch=={_args(TRAINER)['TORCH_VERSION']}" in pins


def test_operator_image_installs_the_operator_extra_only() -> None:
    torchless = [[p for p in i if not p.startswith("torch")] for i in _makefile_installs()]
    assert _dockerfile_installs(OPERATOR) == [i for i in _only_extras(torchless, {"operator"}) if i]


def _requires(dist: str, extras: set[str], seen: set[str]) -> set[str]:
    """Names of every distribution `dist[extras]` pulls in, from the installed packages' metadata."""
    name = dist.lower().replace("_", "-")
    if name in seen:
        return seen
    seen.add(name)
    try:
        requirements = metadata.requires(dist) or []
    except metadata.PackageNotFoundError:
        return seen
    for line in requirements:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
            _requires(req.name, set(req.extras), seen)
    return seen


def test_operator_extra_does_not_pull_torch() -> None:
    operator_tree = _requires("tunewright", {"operator"}, set())
    assert {"kopf", "kubernetes", "pydantic", "boto3"} <= operator_tree
    assert not operator_tree & {"torch", "transformers", "peft", "trl", "accelerate", "nvidia-cudnn-cu12"}
    assert "torch" in _requires("tunewright", {"trainer"}, set())  # the walk does see torch where it is


@pytest.mark.parametrize("dockerfile", [TRAINER, OPERATOR], ids=["trainer", "operator"])
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run([str(hadolint), "--no-color", str(dockerfile)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", [TRAINER, OPERATOR], ids=["trainer", "operator"])
def test_image_runs_as_a_numeric_non_root_user_and_copies_existing_sources(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    users = [a for op, a in instructions if op == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), "the last USER must be numeric, not root"
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()}
    for op, arguments in instructions:
        if op == "COPY":
            *sources, _ = arguments.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
                assert source.split("/")[0] not in ignored, f"{source} is excluded by .dockerignore"


def test_entrypoints_match_the_package_and_the_chart() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    trainer_entry = [a for op, a in _instructions(TRAINER) if op == "ENTRYPOINT"]
    assert trainer_entry == ['["tunewright-train"]'] and "tunewright-train" in scripts
    operator_entry = [a for op, a in _instructions(OPERATOR) if op == "ENTRYPOINT"]
    chart = (ROOT / "charts" / "tunewright" / "templates" / "deployment.yaml").read_text()
    assert operator_entry == ['["python", "-m", "tunewright_operator"]']
    assert "command: [python, -m, tunewright_operator]" in chart
    assert (ROOT / "operator" / "tunewright_operator" / "__main__.py").exists()


@pytest.mark.parametrize(("engine_answers", "build"), [
    (True, "docker build"),
    (False, "buildah bud --format docker --isolation chroot --layers"),
])
def test_make_images_uses_docker_with_an_engine_else_buildah(tmp_path: Path, engine_answers: bool, build: str) -> None:
    """A docker client without an engine (as on the CI machines) must not be chosen."""
    fake = tmp_path / "docker"
    fake.write_text(f"#!/bin/sh\nexit {0 if engine_answers else 1}\n")
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "IMAGE_BUILD_ARGS": "--build-arg X=1"}
    done = subprocess.run(["make", "-n", "--no-print-directory", "images"], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=True)
    lines = done.stdout.splitlines()
    assert [ln.split(" -f ")[0] for ln in lines] == [f"{build} --build-arg X=1"] * 2
    assert [ln.split(" -f ")[1].split()[0] for ln in lines] == ["trainer-image/Dockerfile", "operator/Dockerfile"]
