"""The configuration model: ranges with readable messages, files, overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunewright.config import ConfigError, TrainingConfig, load_config, validate


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"training": {"learningRate": 0}}, "training.learningRate = 0: must be > 0 and <= 1"),
        ({"training": {"learningRate": 1.5}}, "training.learningRate = 1.5: must be > 0 and <= 1"),
        ({"training": {"epochs": 0}}, "training.epochs = 0: must be >= 1 and <= 10000"),
        ({"training": {"batchSize": 0}}, "training.batchSize = 0: must be >= 1 and <= 65536"),
        ({"training": {"gradientAccumulationSteps": 0}}, "training.gradientAccumulationSteps = 0: must be >= 1"),
        ({"training": {"warmupRatio": 1}}, "training.warmupRatio = 1: must be >= 0 and < 1"),
        ({"training": {"weightDecay": -0.1}}, "training.weightDecay = -0.1: must be >= 0 and <= 1"),
        ({"training": {"maxGradNorm": 0}}, "training.maxGradNorm = 0: must be > 0"),
        ({"lora": {"rank": 0}}, "lora.rank = 0: must be >= 1 and <= 1024"),
        ({"lora": {"rank": 2048}}, "lora.rank = 2048: must be >= 1 and <= 1024"),
        ({"lora": {"dropout": 1}}, "lora.dropout = 1: must be >= 0 and < 1"),
        ({"checkpointing": {"keepLast": 0}}, "checkpointing.keepLast = 0: must be >= 1"),
        ({"earlyStopping": {"patience": 0}}, "earlyStopping.patience = 0: must be >= 1"),
        ({"dpo": {"beta": 0}}, "dpo.beta = 0: must be > 0 and <= 100"),
        ({"dpo": {"lossType": "kto"}}, "dpo.lossType = \"kto\": Input should be 'sigmoid', 'ipo' or 'hinge'"),
        ({"method": "ppo"}, "method = \"ppo\""),
        ({"training": {"lr": 1}}, "training.lr: unknown field"),
        ({"name": "My_Adapter"}, "name = \"My_Adapter\""),
        ({"dataset": {}}, "set exactly one of dataset.id or dataset.uri"),
        ({"dataset": {"id": "../etc"}}, "dataset.id = \"../etc\""),
    ],
)
def test_each_range_is_enforced_with_a_message_naming_field_value_and_range(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(data)
    assert expected in str(err.value)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        validate({"training": {"learningRate": -1, "batchSize": 0}, "lora": {"rank": 5000}})
    assert len(err.value.problems) == 3


def test_defaults_are_valid_and_round_trip_in_camel_case() -> None:
    config = validate({"dataset": {"id": "songs"}})
    data = config.to_dict()
    assert data["training"]["learningRate"] == config.training.learning_rate
    assert "learning_rate" not in json.dumps(data)
    assert validate(data) == config
    assert config.adapter_name() == "songs-sft"


def test_yaml_and_json_files_load_with_dotted_overrides(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("method: dpo\ntraining:\n  learningRate: 1e-4\nlora: {rank: 4}\n")
    (tmp_path / "c.json").write_text(json.dumps({"method": "dpo", "training": {"learningRate": 1e-4}}))
    from_yaml = load_config(tmp_path / "c.yaml", {"training.epochs": 7})
    from_json = load_config(tmp_path / "c.json")
    assert isinstance(from_yaml, TrainingConfig)
    assert (from_yaml.method, from_yaml.training.learning_rate, from_yaml.training.epochs, from_yaml.lora.rank) == (
        "dpo", 1e-4, 7, 4)
    assert from_json.training.learning_rate == 1e-4


def test_unreadable_or_malformed_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("training: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")

