"""The operator with the real trainer (`tunewright-train`, tiny-llama on CPU) in the kubelet's pods, storage on
S3 (moto over HTTP) with credentials only from a Secret: a pod killed mid-run is retried, resumes from its
checkpoint, and the finished run becomes an Adapter with its report and provenance.

One test for both, because every trainer process costs seconds of imports on CPU-only CI."""

from __future__ import annotations

import base64
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from support.k8s import wait_for
from support.s3 import aws_env
from tunewright.data import synthetic
from tunewright.data.store import DatasetStore
from tunewright.runs import RunStore
from tunewright.storage import open_storage
from tunewright.training.checkpoints import CheckpointStore
from tunewright_operator.kube import SECRET_OPT_IN

pytestmark = pytest.mark.slow
REAL_TRAINER = [str(Path(sys.executable).parent / "tunewright-train")]

TINY: dict[str, Any] = {
    "baseModel": "tiny-llama", "dataset": {"id": "songs"},
    "training": {"learningRate": 5e-3, "batchSize": 8, "logEverySteps": 1},
    "data": {"validationFraction": 0.2}, "lora": {"rank": 8, "alpha": 16},
}


def test_real_trainer_resumes_a_killed_pod_and_publishes_the_adapter(k8s, s3_root, moto_endpoint, tmp_path,
                                                                     operator_factory, kubelet_factory):
    root = open_storage(s3_root)
    meta = DatasetStore(root).import_file(
        "songs", synthetic.write_jsonl(synthetic.rated_rows(), tmp_path / "songs.jsonl"), "rated")
    secret = {k: base64.b64encode(v.encode()).decode() for k, v in aws_env(moto_endpoint).items()}
    k8s.core.create_namespaced_secret(k8s.namespace, {"metadata": {"name": "s3", "labels": {SECRET_OPT_IN: "true"}},
                                                      "data": secret})
    kubelet = kubelet_factory(REAL_TRAINER)
    operator_factory()  # no AWS_* in its environment: it reads storage with the Secret's credentials
    every, total = 3, 12
    spec = {**TINY, "training": {**TINY["training"], "maxSteps": total}, "checkpointing": {"everySteps": every},
            "storage": {"uri": s3_root, "secretName": "s3"}}
    tj = k8s.create("trainingjobs", "tiny", spec)
    run = RunStore(root, wait_for(lambda: k8s.status("tiny").get("runId"), 30, "the run id"))

    def after_a_checkpoint() -> Any:
        progress = run.read_progress()
        return progress if progress and progress.last_checkpoint else None  # progress.json lags on S3 (5 s)

    progress = wait_for(after_a_checkpoint, 180, "a committed checkpoint", interval=0.1)
    kubelet.kill("tiny-a1", signal.SIGKILL)
    reported = int(progress.last_checkpoint.rsplit("-", 1)[1])
    wait_for(lambda: kubelet.pods["tiny-a1"].exited(), 10, "the kill")
    committed = CheckpointStore(run.checkpoints, keep_last=3, background=False).latest()
    assert committed is not None

    done = k8s.wait_phase("tiny", "Succeeded", "Failed", timeout=240)
    assert done["phase"] == "Succeeded", f"{done['message']}\n{kubelet.log(done['podName'])[-3000:]}"
    assert (done["attempts"], done["failures"]) == (2, 1) and kubelet.started == ["tiny-a1", "tiny-a2"]
    failure = next(c for c in done["conditions"] if c["type"] == "PodFailed")
    assert failure["reason"] == "TrainerError" and "exit code 137" in failure["message"]
    assert (run.read_report() or {})["resumedFrom"] == committed.name  # the latest committed checkpoint
    # Nothing committed is lost; a checkpoint still uploading in the background at the kill may be (it has no
    # manifest), so the retrained span is not bounded by one interval.
    assert committed.step >= reported
    assert (done["step"], done["totalSteps"], done["progress"]) == (total, total, f"{total}/{total}")
    assert done["lastCheckpoint"] == f"checkpoint-{total}" and done["metrics"]["loss"] > 0

    adapter = k8s.get("adapters", done["adapterRef"]["name"])
    assert adapter["metadata"]["name"] == "songs-sft-v1" and adapter["status"]["phase"] == "Ready"
    a = adapter["spec"]
    assert (a["name"], a["version"], a["baseModel"], a["method"]) == ("songs-sft", 1, "tiny-llama", "sft")
    assert a["uri"] == f"{s3_root}/adapters/songs-sft/1"
    assert (a["dataset"]["id"], a["dataset"]["digest"]) == ("songs", meta.digest)
    assert a["trainingJob"] == {"namespace": k8s.namespace, "name": "tiny", "uid": tj["metadata"]["uid"]}
    assert a["runId"] == done["runId"] and a["config"]["training"]["maxSteps"] == total
    assert a["report"]["steps"] == total and a["report"]["finalLoss"] > 0 and a["report"]["bestEvalLoss"] > 0
    files = open_storage(a["uri"]).list()
    assert {"adapter_config.json", "adapter_model.safetensors", "report.json", "report.html",
            "record.json"} <= set(files)
    assert a["report"]["htmlUri"] == f"{a['uri']}/report.html"  # `kubectl get adapters -o wide` shows it
    env = k8s.pods()[0]["spec"]["containers"][0]["env"]
    assert not any(e["name"].startswith("AWS") for e in env)
