"""Fixtures for the MusicGen tests: a fresh tiny-musicgen preset, synthetic audio datasets in a file:// root."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from tunewright.config import TrainingConfig, apply_overrides, validate
from tunewright.data.store import DatasetStore
from tunewright.data.synthetic_audio import write_dataset
from tunewright.storage import Storage, open_storage

# Learns on tiny-musicgen within a few dozen steps (see tunewright.data.synthetic_audio for the rule).
QUICK: dict[str, Any] = {
    "baseModel": "tiny-musicgen",
    "training": {"learningRate": 5e-3, "epochs": 4, "batchSize": 8, "logEverySteps": 5},
    "data": {"validationFraction": 0.25},
}


def _config(dataset: str, **dotted: Any) -> TrainingConfig:
    return validate(apply_overrides(copy.deepcopy(QUICK), {"dataset": {"id": dataset}, **dotted}))


@pytest.fixture(scope="session")
def musicgen_config() -> Callable[..., TrainingConfig]:
    """`musicgen_config("clips", **{"training.epochs": 2})`: a quick config for a dataset, dotted overrides."""
    return _config


@pytest.fixture(scope="module", autouse=True)
def fresh_preset(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Build tiny-musicgen from the code under test (not a copy cached by an older checkout); one thread,
    which is faster for models this small and immune to other processes competing for the cores."""
    previous_cache, previous_threads = os.environ.get("TUNEWRIGHT_CACHE"), torch.get_num_threads()
    os.environ["TUNEWRIGHT_CACHE"] = str(tmp_path_factory.mktemp("tunewright-cache"))
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous_threads)
    if previous_cache is None:
        os.environ.pop("TUNEWRIGHT_CACHE", None)
    else:
        os.environ["TUNEWRIGHT_CACHE"] = previous_cache


@pytest.fixture(scope="module")
def audio_root(tmp_path_factory: pytest.TempPathFactory) -> Storage:
    """A storage root with audio datasets `clips` (rated) and `pairs` (preference)."""
    tmp = tmp_path_factory.mktemp("audio")
    root = open_storage(f"file://{tmp}/store")
    store = DatasetStore(root)
    store.import_file("clips", write_dataset(tmp / "rated", "rated", prompts=24, per_prompt=2), "rated",
                      modality="audio")
    store.import_file("pairs", write_dataset(tmp / "pairs", "preference", prompts=24, per_prompt=3, seed=1),
                      "preference", modality="audio")
    return root
