"""Both images built for real by `make images` (buildah, chroot isolation) on local bases and run with `buildah
run`: the operator image starts from its entrypoint and prints its help, imports no torch and runs as uid 65532;
the trainer image's `tunewright-train` trains the tiny preset for a few steps on CPU and writes an adapter.

The bases are tools/images/local_bases.sh's debootstrapped bookworm (python 3.11) and the same plus PyPI's
torch, passed as PYTHON_IMAGE / BASE_IMAGE: no registry image can be pulled here. Needs root, buildah and
debootstrap (`make image-tools`); without them the module skips with one line, under CI (`CI` set) it fails.
`make images-test` runs this module; `make test` leaves it out (see the README's testing notes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.helm import ROOT
from tunewright.data.synthetic import rated_rows, write_jsonl

PREFIX = "localhost/tunewright-test"
TORCH_FAMILY = {"torch", "transformers", "peft", "trl", "accelerate", "datasets", "nvidia"}


def _missing() -> list[str]:
    missing = [tool for tool in ("buildah", "debootstrap") if not shutil.which(tool)]
    return missing + ([] if os.geteuid() == 0 else ["root"])


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: exit {done.returncode}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    missing = _missing()
    if missing:
        reason = f"no {', '.join(missing)}: the image tests need root, buildah and debootstrap (`make image-tools`)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    python_base, torch_base = _run([str(ROOT / "tools/images/local_bases.sh")], 3600).stdout.split()[-2:]
    build_args = f"--build-arg PYTHON_IMAGE={python_base} --build-arg BASE_IMAGE={torch_base}"
    _run(["make", "--no-print-directory", "images", "IMAGE_TOOL=buildah", f"IMAGE_PREFIX={PREFIX}",
          f"IMAGE_BUILD_ARGS={build_args}"], 3600)
    version = _run(["sed", "-n", r's/^version = "\(.*\)"/\1/p', "pyproject.toml"], 10).stdout.strip()
    return {"operator": f"{PREFIX}/operator:{version}", "trainer": f"{PREFIX}/trainer:{version}"}


def _config(image: str, kind: str = "OCIv1") -> dict[str, Any]:
    """The image's configuration as an OCI runtime (kind "OCIv1") or Docker (kind "Docker") reads it."""
    return json.loads(_run(["buildah", "inspect", "--type", "image", image], 60).stdout)[kind]["config"]


@pytest.fixture
def container(request: pytest.FixtureRequest, images: dict[str, str]) -> Iterator[str]:
    """A working container of images[param], removed afterwards (its writable layer is all it holds)."""
    name = _run(["buildah", "from", "--pull-never", images[request.param]], 120).stdout.strip()
    yield name
    subprocess.run(["buildah", "rm", name], capture_output=True, check=False)


def _inside(container: str, argv: list[str], volumes: tuple[str, ...] = (), timeout: float = 300
            ) -> subprocess.CompletedProcess[str]:
    """argv in the container as its image configures it (user, workdir, env), chroot isolation."""
    mounts = [arg for volume in volumes for arg in ("-v", volume)]
    return subprocess.run(["buildah", "run", "--isolation", "chroot", *mounts, container, "--", *argv],
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize("container", ["operator"], indirect=True)
def test_operator_image_starts_from_its_entrypoint_and_prints_help(container: str, images: dict[str, str]) -> None:
    entrypoint = _config(images["operator"])["Entrypoint"]
    assert entrypoint == ["python", "-m", "tunewright_operator"]
    done = _inside(container, [*entrypoint, "--help"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:") and "--allowed-images" in done.stdout


@pytest.mark.parametrize("container", ["operator"], indirect=True)
def test_operator_image_imports_no_torch(container: str) -> None:
    """Every module of the operator package imported (what `python -m tunewright_operator` loads and more)."""
    script = ("import importlib, importlib.util, json, pkgutil, sys, tunewright_operator as p\n"
              "names = [m.name for m in pkgutil.iter_modules(p.__path__, p.__name__ + '.')]\n"
              "[importlib.import_module(n) for n in names]\n"
              "print(json.dumps({'imported': names, 'roots': sorted({m.split('.')[0] for m in sys.modules}),\n"
              "                  'torch_installed': importlib.util.find_spec('torch') is not None}))")
    done = _inside(container, ["python", "-c", script])
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert {"tunewright_operator.__main__", "tunewright_operator.handlers"} <= set(seen["imported"])
    assert "kopf" in seen["roots"]  # the walk did load the operator's dependencies
    assert not TORCH_FAMILY & set(seen["roots"]) and not seen["torch_installed"]


@pytest.mark.parametrize("image", ["operator", "trainer"])
def test_images_run_as_a_numeric_non_root_user(image: str, images: dict[str, str]) -> None:
    assert _config(images[image])["User"] == "65532:65532"
    name = _run(["buildah", "from", "--pull-never", images[image]], 120).stdout.strip()
    try:
        done = _inside(name, ["sh", "-c", "id -u; id -g; touch /usr/probe 2>/dev/null && echo root-writable"])
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, check=False)
    assert done.stdout.split() == ["65532", "65532"], done.stdout + done.stderr


@pytest.mark.parametrize("image", ["operator", "trainer"])
def test_images_keep_the_dockerfiles_shell(image: str, images: dict[str, str]) -> None:
    """buildah's OCI format drops SHELL (RUN would use /bin/sh, no pipefail); `make images` builds docker format."""
    assert _config(images[image], "Docker")["Shell"] == ["/bin/bash", "-o", "pipefail", "-c"]


@pytest.mark.parametrize("container", ["trainer"], indirect=True)
def test_trainer_image_trains_the_tiny_preset_and_writes_an_adapter(container: str, images: dict[str, str],
                                                                     tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_jsonl(rated_rows(prompts=12), data / "songs.jsonl")
    shutil.copy(ROOT / "examples" / "config-sft.yaml", data / "config.yaml")
    data.chmod(0o777)  # the image's user (65532) writes the store there
    volume = (f"{data}:/data",)
    store = ["--storage", "file:///data/store"]

    imported = _inside(container, ["tunewright", *store, "dataset", "import", "songs", "/data/songs.jsonl",
                                   "--kind", "rated"], volume)
    assert imported.returncode == 0, imported.stderr
    entrypoint = _config(images["trainer"])["Entrypoint"]
    assert entrypoint == ["tunewright-train"]
    trained = _inside(container, [*entrypoint, "--config", "/data/config.yaml", "--dataset", "songs", *store,
                                  "--set", "training.maxSteps=4", "--metrics-port", "0", "--quiet"], volume)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]

    adapter = data / "store" / "adapters" / "songs-sft" / "1"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").stat().st_size > 1000
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    progress = json.loads(next((data / "store" / "runs").glob("*/progress.json")).read_text())
    assert (progress["state"], progress["step"], progress["totalSteps"]) == ("completed", 4, 4)
