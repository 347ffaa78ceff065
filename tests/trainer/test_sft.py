"""SFT end to end, in-process: learning, the PEFT artifact, the report, the registry and the CLI's errors."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest
import torch

from support.trainer import quick_config
from tunewright.cli import main as tunewright_cli
from tunewright.cli import train as train_cli
from tunewright.models.loading import load_base
from tunewright.registry import AdapterRecord, Registry, RegistryError
from tunewright.storage import Storage, open_storage
from tunewright.training.run import Outcome, Run


@pytest.fixture(scope="module")
def metrics_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, metrics_port: int) -> tuple[Storage, Outcome]:
    from support.trainer import import_rows
    from tunewright.data import synthetic

    tmp = tmp_path_factory.mktemp("sft")
    root = open_storage(f"file://{tmp}/store")
    import_rows(root, "songs", synthetic.rated_rows(), "rated", tmp)
    import_rows(root, "prefs", synthetic.preference_rows(prompts=4), "preference", tmp)
    config = quick_config("songs", **{"training.epochs": 3, "checkpointing.everySteps": 10})
    return root, Run(config, root, metrics_port=metrics_port, display=False).execute()


def test_metrics_endpoint_ends_with_the_liveness_gauges_of_the_whole_run(trained: tuple[Storage, Outcome],
                                                                          metrics_port: int) -> None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    got = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
           if line.startswith("tunewright_train_")}
    assert got["tunewright_train_step"] == got["tunewright_train_total_steps"] == trained[1].report["steps"]
    assert got["tunewright_train_last_progress_timestamp_seconds"] > 1.7e9
    assert got["tunewright_train_last_checkpoint_timestamp_seconds"] > 1.7e9
    # everySteps 10, an epoch has fewer: the interval is an epoch's steps times the measured step time
    assert 0 < got["tunewright_train_checkpoint_interval_seconds"] < 600


def test_sft_lowers_validation_loss_on_rule_following_samples(trained: tuple[Storage, Outcome]) -> None:
    report = trained[1].report
    assert report["initialEvalLoss"] > 5.5
    assert report["bestEvalLoss"] < report["initialEvalLoss"] - 2.0
    # Only high-rated samples train: 1 in 3 of the synthetic rows is rated >= 4.
    assert report["samples"]["trainExamples"] * 3 == report["samples"]["trainRows"]


def test_adapter_is_a_peft_directory_that_loads_on_the_base_and_changes_outputs(
        trained: tuple[Storage, Outcome], tmp_path: Path) -> None:
    from peft import PeftModel

    outcome = trained[1]
    adapter = open_storage(outcome.result.adapter_uri).download_dir("", tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "report.json"} <= {p.name for p in adapter.iterdir()}
    base, tokenizer, _ = load_base("tiny-llama")
    ids = tokenizer("a happy song about the moon: sun", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, str(adapter))
        after = tuned(input_ids=ids).logits
        in_memory = outcome.model(input_ids=ids).logits
    assert (after - before).abs().max() > 0.1
    torch.testing.assert_close(after, in_memory)


def test_report_and_metrics_log_describe_the_run(trained: tuple[Storage, Outcome]) -> None:
    root, outcome = trained
    report = json.loads(open_storage(outcome.result.report_uri.rsplit("/", 1)[0]).read_text("report.json"))
    for key in ("finalTrainLoss", "bestEvalLoss", "finalEvalLoss", "bestStep", "epochs", "steps", "stoppedEarly",
                "trainingSeconds", "samplesPerSecond", "config", "dataset", "baseModel", "versions"):
        assert report[key] is not None, key
    assert report["dataset"]["digest"].startswith("sha256:")
    assert report["config"]["training"]["learningRate"] == 5e-3
    assert {"torch", "transformers", "peft"} <= set(report["versions"])
    lines = [json.loads(x) for x in root.child("runs", outcome.run_id).read_text("metrics.jsonl").splitlines()]
    train = [x for x in lines if "loss" in x]
    assert [x["step"] for x in train] == list(range(1, report["steps"] + 1))
    assert all({"learning_rate", "grad_norm", "epoch", "timestamp"} <= set(x) for x in train)
    assert any("tokens_per_second" in x for x in train)
    assert len([x for x in lines if "eval_loss" in x]) >= 3
    progress = json.loads(root.child("runs", outcome.run_id).read_text("progress.json"))
    assert progress["state"] == "completed" and progress["step"] == report["steps"]


def test_registry_versions_and_refuses_an_existing_version(trained: tuple[Storage, Outcome]) -> None:
    root, outcome = trained
    registry = Registry(root)
    record = registry.get("songs-sft")
    assert (record.version, record.run_id, record.dataset.id) == (1, outcome.run_id, "songs")
    assert record.config["method"] == "sft" and record.report.final_loss is not None
    with pytest.raises(RegistryError, match="version 1 already exists; the next free version is 2"):
        registry.register(AdapterRecord.model_validate(record.to_dict()))


def test_finished_run_is_not_trained_twice(trained: tuple[Storage, Outcome]) -> None:
    root, outcome = trained
    config = quick_config("songs", **{"training.epochs": 3, "checkpointing.everySteps": 10})
    again = Run(config, root, run_id=outcome.run_id, resume="latest", display=False).execute()
    assert again.result == outcome.result
    assert Registry(root).versions("songs-sft") == [1]


def test_cli_lists_and_shows_adapters_and_datasets(trained: tuple[Storage, Outcome],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    root = trained[0]
    assert tunewright_cli.main(["--storage", root.uri, "adapter", "list"]) == 0
    assert tunewright_cli.main(["--storage", root.uri, "dataset", "list"]) == 0
    assert tunewright_cli.main(["--storage", root.uri, "adapter", "show", "songs-sft"]) == 0
    out = capsys.readouterr().out
    assert "songs-sft" in out and "v1" in out and "rated" in out and '"runId"' in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "nope"], "dataset 'nope' not found"),
        (["--dataset", "songs", "--set", "training.learningRate=0"], "training.learningRate = 0: must be > 0"),
        (["--dataset", "prefs"], "method sft needs a dataset of kind rated or ranked; dataset 'prefs' is preference"),
        (["--dataset", "songs", "--set", "data.minRating=9"], "no sample has rating >= data.minRating (9)"),
        (["--dataset", "songs", "--set", "baseModel=/no/such/model"], "cannot load base model '/no/such/model'"),
        (["--dataset", "songs", "--config", "/no/such.yaml"], "cannot read /no/such.yaml"),
    ],
)
def test_train_cli_fails_with_one_line_naming_the_problem(trained: tuple[Storage, Outcome], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str], argv: list[str],
                                                          message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("TUNEWRIGHT_TERMINATION_LOG", str(termination))
    code = train_cli.main(["--storage", trained[0].uri, "--metrics-port", "0", "--quiet", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert message in err[-1] and err[-1].startswith("error: ")
    assert message in termination.read_text()
