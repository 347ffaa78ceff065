"""What the trainer CLI prints: nothing but its own lines under --quiet, whole lines when not on a terminal,
and a summary with the objective's figures and uncut URIs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from support.trainer import import_rows
from tunewright.data import synthetic
from tunewright.storage import open_storage
from tunewright.training.callbacks import TerminalDisplay
from tunewright.training.report import print_summary

LONG = "a-storage-root-whose-path-is-long-enough-that-its-uris-pass-eighty-columns"


def test_quiet_dpo_run_without_validation_prints_train_rewards_and_no_bars_or_warnings(tmp_path: Path) -> None:
    root = open_storage(f"file://{tmp_path}/{LONG}")
    import_rows(root, "prefs", synthetic.preference_rows(prompts=4), "preference", tmp_path)
    cmd = [sys.executable, "-m", "tunewright.cli.train", "--storage", root.uri, "--dataset", "prefs",
           "--set", "method=dpo", "--set", "data.validationFraction=0", "--set", "training.maxSteps=3",
           "--set", "training.learningRate=5e-3", "--metrics-port", "0", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)  # stderr is a pipe
    err = done.stderr
    assert "Loading weights" not in err and "Warning" not in err and "%|" not in err, err
    uri = done.stdout.strip().splitlines()[-1]
    assert uri == f"{root.uri}/adapters/prefs-dpo/1" and len(uri) > 80
    lines = err.splitlines()
    assert f"adapter: {uri}" in lines and f"report: {uri}/report.html" in lines  # whole, on one line each
    summary = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in lines if line.count("│") == 3}
    assert "final eval loss" not in summary  # no validation split...
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        float(summary[f"train {key}"])  # ...but the training batches' rewards and accuracy
    page = open_storage(uri).read_text("report.html")  # training figures only, and says why no outputs
    assert 'alt="Preference accuracy"' in page and "held-out prompts, and this run had none" in page
    report = json.loads(open_storage(uri).read_text("report.json"))
    assert set(report["finalTrainMetrics"]) == {"rewards/chosen", "rewards/rejected", "rewards/margins",
                                                "rewards/accuracies"}


def test_progress_lines_and_summary_stay_whole_when_not_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, width=80)  # what rich uses when stderr is a pipe: 80 columns, no terminal
    display = TerminalDisplay(console)
    display.start(100, 0)
    display.log({"step": 10, "total_steps": 100, "epoch": 0.5, "loss": 0.6931, "learning_rate": 0.0049,
                 "grad_norm": 0.3012, "samples_per_second": 24.39, "rewards/accuracies": 0.5625})
    uri = f"s3://bucket/{LONG}/adapters/prefs-dpo/1"
    print_summary({"runId": "prefs-dpo-20261128-075143-2578", "method": "dpo", "steps": 10}, uri,
                  f"{uri}/report.html", console)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("step 10/100 epoch 0.50  loss=0.6931") and lines[0].endswith("rewards/accuracies=0.5625")
    assert f"adapter: {uri}" in lines and f"report: {uri}/report.html" in lines
