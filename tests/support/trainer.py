"""Fixtures for trainer tests: a file:// storage root with synthetic datasets, and quick configs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tunewright.config import TrainingConfig, apply_overrides, validate
from tunewright.data import synthetic
from tunewright.data.store import DatasetStore
from tunewright.storage import Storage, open_storage

# Small, fast and still learning on tiny-llama (see shared/notes/calibration.md).
QUICK: dict[str, Any] = {
    "baseModel": "tiny-llama",
    "training": {"learningRate": 5e-3, "epochs": 2, "batchSize": 8, "logEverySteps": 1},
    "data": {"validationFraction": 0.2},
    "lora": {"rank": 8, "alpha": 16, "modulesToSave": ["lm_head"]},
}


def quick_config(dataset: str, **dotted: Any) -> TrainingConfig:
    data = apply_overrides(copy.deepcopy(QUICK), {"dataset": {"id": dataset}, **dotted})
    return validate(data)


def import_rows(root: Storage, dataset_id: str, rows: list, kind: str, tmp: Path) -> None:
    DatasetStore(root).import_file(dataset_id, synthetic.write_jsonl(rows, tmp / f"{dataset_id}.jsonl"), kind)


@pytest.fixture
def root(tmp_path: Path) -> Storage:
    storage = open_storage(f"file://{tmp_path}/store")
    import_rows(storage, "songs", synthetic.rated_rows(), "rated", tmp_path)
    return storage
