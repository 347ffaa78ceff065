"""SFT end to end, in-process: learning, the PEFT artifact, the report, the registry and the CLI's errors."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest
import torch

from support.browser import ARTIFACTS as BROWSER_ARTIFACTS
from support.browser import check_page
from support.trainer import quick_config
from tunewright.cli import main as tunewright_cli
from tunewright.cli import train as train_cli
from tunewright.data.split import split_by_prompt
from tunewright.data.store import DatasetStore
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


def test_a_given_version_is_read_without_listing_the_versions(trained: tuple[Storage, Outcome],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry(trained[0])
    listed = []
    listing = registry.adapters.list_dirs
    monkeypatch.setattr(registry.adapters, "list_dirs", lambda *a: listed.append(a) or listing(*a))
    assert registry.get("songs-sft", 1).version == 1 and listed == []  # the operator's read at each completion
    with pytest.raises(RegistryError, match=r"adapter 'songs-sft' has no version 7 \(versions: \[1\]\)"):
        registry.get("songs-sft", 7)


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


def test_report_page_shows_curves_and_base_vs_adapter_generations_in_chromium(
        trained: tuple[Storage, Outcome]) -> None:
    root, outcome = trained
    run = root.child("runs", outcome.run_id)
    adapter = open_storage(outcome.result.adapter_uri)
    page = adapter.read_text("report.html")
    assert run.read_text("report.html") == page  # the same page in the run and in the registry
    assert outcome.result.report_page_uri == f"{adapter.uri}/report.html"
    assert Registry(root).get("songs-sft").report.html_uri == outcome.result.report_page_uri
    # Self-contained: nothing is fetched from anywhere, which the page's CSP also enforces.
    assert "http://" not in page and "https://" not in page and "default-src 'none'" in page
    report = outcome.report
    assert [c["step"] for c in report["checkpoints"]] == [10, 20, 30]
    assert report["listen"]["kind"] == "text" and len(report["listen"]["prompts"]) == 3
    train_rows, validation_rows = split_by_prompt(DatasetStore(root).rows("songs"), 0.2)
    for item in report["listen"]["prompts"]:  # held out: validation prompts, never trained on
        assert item["prompt"] in {r.prompt for r in validation_rows} - {r.prompt for r in train_rows}
        assert item["base"] != item["adapter"]

    seen = check_page(outcome.result.report_page_uri, BROWSER_ARTIFACTS / "report-sft.png")
    assert seen["errors"] == []
    # loss, learning rate, grad norm: each decoded by the browser with a real size
    assert len(seen["images"]) == 3, seen["images"]
    assert all(i["complete"] and i["width"] > 100 and i["height"] > 100 for i in seen["images"]), seen["images"]
    assert seen["audio"] == []
    assert seen["screenshot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and seen["screenshot"].stat().st_size > 20_000


def test_report_cli_rebuilds_the_page_and_refuses_a_bad_version(
        trained: tuple[Storage, Outcome], capsys: pytest.CaptureFixture[str]) -> None:
    root, outcome = trained
    adapter = open_storage(outcome.result.adapter_uri)
    original = adapter.read_text("report.html")
    adapter.delete("report.html")
    assert tunewright_cli.main(["--storage", root.uri, "report", "songs-sft:1"]) == 0
    assert capsys.readouterr().out.strip() == outcome.result.report_page_uri
    assert adapter.read_text("report.html") == original
    assert tunewright_cli.main(["--storage", root.uri, "adapter", "show", "songs-sft"]) == 0
    assert json.loads(capsys.readouterr().out)["report"]["htmlUri"] == outcome.result.report_page_uri
    assert tunewright_cli.main(["--storage", root.uri, "report", "songs-sft:v2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: ADAPTER[:VERSION]: version must be a positive integer, got 'v2' in 'songs-sft:v2'"]
    assert tunewright_cli.main(["--storage", root.uri, "report", "songs-sft:7"]) == 1
    assert "adapter 'songs-sft' has no version 7 (versions: [1])" in capsys.readouterr().err


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
