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
        ({"dataset": {"id": "songs\n"}}, "dataset.id = \"songs\\n\""),
        ({"training": {"maxSteps": True}}, "training.maxSteps = true: must be an integer"),
        ({"training": {"epochs": 2.0}}, "training.epochs = 2.0: must be an integer"),
        ({"training": {"batchSize": "8"}}, "training.batchSize = \"8\": must be an integer"),
        ({"training": {"learningRate": "1e-3"}}, "training.learningRate = \"1e-3\": must be a number"),
        ({"training": {"learningRate": True}}, "training.learningRate = true: must be a number"),
        ({"earlyStopping": {"minDelta": float("inf")}}, "earlyStopping.minDelta = Infinity: must be a finite"),
        ({"dpo": {"minRatingGap": float("nan")}}, "dpo.minRatingGap = NaN: must be a finite number"),
        ({"name": 123}, "name = 123: must be a string"),
        ({"lora": {"targetModules": "q_proj"}}, "lora.targetModules = \"q_proj\": must be a list"),
        ({"training": "fast"}, "training = \"fast\": must be a mapping"),
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



_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh", strict=True))


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("bomb.yaml", _BOMB, r"bomb\.yaml:\d+: not valid YAML: aliases expand to more than 100000 values"),
        ("rec.yaml", "a: &a [*a]\n", r"rec\.yaml:1: not valid YAML: recursive alias"),
        ("rec2.yaml", "a: &a {b: *a}\n", r"rec2\.yaml:1: not valid YAML: recursive alias"),
        ("dup.yaml", "method: sft\ntraining:\n  epochs: 1\n  epochs: 2\n", r"dup\.yaml:4: .*duplicate key 'epochs'"),
        ("dup.json", '{"method": "sft",\n "method": "dpo"}', r"dup\.json:2: not valid JSON: duplicate key 'method'"),
        ("deep.yaml", "[" * 100_000 + "]" * 100_000, r"deep\.yaml:1: not valid YAML: nesting deeper than 64"),
        ("deep.json", "[" * 100_000 + "]" * 100_000, r"deep\.json: not valid JSON: nested too deeply"),
        ("nan.json", '{"training":\n {"learningRate": NaN}}', r"nan\.json:2: not valid JSON: NaN is not a JSON number"),
        ("empty.yaml", "", r"empty\.yaml is empty"),
        ("comment.yaml", "# nothing\n", r"comment\.yaml is empty"),
        ("max.yaml", "training:\n  maxSteps: true\n", r"training\.maxSteps = true: must be an integer"),
        ("date.yaml", "name: 2024-01-01\n", r"name = \"2024-01-01\": must be a string"),
        ("big.yaml", "# " + "x" * (1 << 20), r"big\.yaml: \d+ bytes; documents of at most 1048576 bytes"),
    ],
)
def test_hostile_documents_are_refused_quickly_in_one_line(tmp_path: Path, name: str, text: str,
                                                           expected: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(tmp_path / name)
    assert "\n" not in str(err.value)


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_bytes(b"method: sft\nname: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"b\.yaml:2: byte 0xff is not UTF-8"):
        load_config(tmp_path / "b.yaml")


def test_upper_case_yaml_suffix_is_yaml_and_exponents_without_a_dot_are_numbers(tmp_path: Path) -> None:
    (tmp_path / "c.YAML").write_text("training: {learningRate: 1e-4, maxGradNorm: 2E+1}\n")
    config = load_config(tmp_path / "c.YAML")
    assert (config.training.learning_rate, config.training.max_grad_norm) == (1e-4, 20.0)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"training.learningRate.x": 1}, "--set training.learningRate.x: training.learningRate is a float, not a "
         "mapping"),
        ({"lora.targetModules": ["q"], "lora.targetModules.x": 1}, "--set lora.targetModules.x: lora.targetModules "
         "is a list, not a mapping"),
        ({"a..b": 1}, "--set a..b: empty key part"),
    ],
)
def test_set_paths_through_scalars_or_lists_are_refused(tmp_path: Path, overrides: dict, expected: str) -> None:
    (tmp_path / "c.yaml").write_text("method: sft\ntraining: {learningRate: 0.001}\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml", overrides)
    assert str(err.value).startswith(expected)


def test_problems_in_a_yaml_file_name_their_line_and_overrides_name_the_flag(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("method: sft\ntraining:\n  epochs: 1\n  maxSteps: true\n"
                                     "lora:\n  targetModules: [q, 3]\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml", {"training.epochs": "x"})
    assert err.value.problems == [
        '--set training.epochs = "x": must be an integer (not a boolean, string or fraction)',
        "line 4: training.maxSteps = true: must be an integer (not a boolean, string or fraction)",
        "line 6: lora.targetModules.1 = 3: must be a string (quote it)",
    ]


def test_problems_in_a_json_file_name_their_line(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text('{\n  "method": "sft",\n  "training": {"epochs": 1,\n    "maxSteps": true},\n'
                                     '  "lora": {"targetModules": [\n    "q",\n    3]},\n  "extra": {"a": [1]}\n}\n')
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.json", {"training.epochs": "x"})
    assert err.value.problems == [
        '--set training.epochs = "x": must be an integer (not a boolean, string or fraction)',
        "line 4: training.maxSteps = true: must be an integer (not a boolean, string or fraction)",
        "line 7: lora.targetModules.1 = 3: must be a string (quote it)",
        "line 8: extra: unknown field",
    ]
