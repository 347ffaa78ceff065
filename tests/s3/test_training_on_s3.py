"""End to end on the S3 server: dataset, training with checkpoints and retention, /metrics scraped during the
run, SIGKILL, resume from S3, adapter registered on S3."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from support.trainer import import_rows, quick_config
from tunewright.data import synthetic
from tunewright.registry import Registry
from tunewright.storage import open_storage
from tunewright.training.checkpoints import CheckpointStore
from tunewright.training.run import Run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[str, float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.labels.get("trainingjob") == "s3-run"}


def test_train_on_s3_scrape_metrics_kill_and_resume(s3_root: str, tmp_path: Path) -> None:
    root = open_storage(s3_root)
    import_rows(root, "songs", synthetic.rated_rows(), "rated", tmp_path)
    config = quick_config("songs", **{"training.epochs": 8, "training.batchSize": 4,
                                      "checkpointing.everySteps": 10, "checkpointing.keepLast": 2})
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunewright.cli.train", "--config", str(tmp_path / "config.json"), "--storage",
         root.uri, "--run-id", "s3-run", "--resume", "auto", "--metrics-port", str(port), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = CheckpointStore(root.child("runs", "s3-run", "checkpoints"), keep_last=2, background=False)
    scrapes: list[dict[str, float]] = []
    deadline = time.monotonic() + 180
    try:
        # Past a retention round (keepLast 2): two or three committed at once lasted only an upload's time.
        while len(scrapes) < 3 or getattr(store.latest(), "step", 0) < 30:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            sample = _scrape(port)
            if sample.get("tunewright_train_step", 0) > 0 and "tunewright_train_loss" in sample:
                scrapes.append(sample)
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = store.latest()
    assert killed_at is not None and not root.exists("runs/s3-run/result.json")

    # What /metrics said matches what metrics.jsonl recorded for that step.
    logged = {}
    for line in root.child("runs", "s3-run").read_text("metrics.jsonl").splitlines():
        record = json.loads(line)
        if "loss" in record:
            logged[record["step"]] = record
    # metrics.jsonl is flushed every few seconds: SIGKILL loses only its unflushed tail.
    flushed = [sample for sample in scrapes if int(sample["tunewright_train_step"]) in logged]
    assert flushed and all(int(s["tunewright_train_step"]) > max(logged) for s in scrapes if s not in flushed)
    for sample in flushed:
        record = logged[int(sample["tunewright_train_step"])]
        assert abs(sample["tunewright_train_loss"] - record["loss"]) < 1e-9
        assert abs(sample["tunewright_train_learning_rate"] - record["learning_rate"]) < 1e-12
        assert sample["tunewright_train_total_steps"] == record["total_steps"]

    outcome = Run(config, root, run_id="s3-run", resume="latest", display=False).execute()
    assert outcome.report["resumedFrom"] == killed_at.name
    steps = [json.loads(x)["step"] for x in root.child("runs", "s3-run").read_text("metrics.jsonl").splitlines()
             if '"loss"' in x]
    assert steps == list(range(1, outcome.report["steps"] + 1))
    kept = [c.step for c in store.committed()]
    best = store.best()
    assert best is not None
    assert set(kept) == {*sorted(kept)[-2:], best.step} and len(kept) <= 3
    record = Registry(root).get("songs-sft")
    assert record.uri.startswith("s3://") and record.run_id == "s3-run"
    assert {"adapter_config.json", "adapter_model.safetensors", "report.json", "record.json"} <= set(
        root.child("adapters", "songs-sft", "1").list())
