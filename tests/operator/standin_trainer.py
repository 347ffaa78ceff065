"""A stand-in for `tunewright-train` that keeps the trainer's contract without torch (starts in ~0.3 s).

Same flags, same run layout (progress.json, committed checkpoints, report.json, registry record, result.json),
same exit codes (0; 1 with the reason in TUNEWRIGHT_TERMINATION_LOG; 143 after a checkpoint on SIGTERM),
same idempotent retry (result.json present → exit 0), only node 0 writes (TUNEWRIGHT_NODE_RANK). Its
"training" is sleeping through steps.

It also checks that it is the run's only writer: node 0 records its pid in the run (standin/writer) and fails
(exit 3, "two writers") when the pid recorded there is another process that is still alive — an earlier
attempt still committing its SIGTERM checkpoint. (All pods run on the test's machine, so pids compare.)

Test knobs (environment, set by the kubelet harness, never by the operator):
    STANDIN_STEP_SECONDS   seconds per step (default 0.05)
    STANDIN_FAIL_AT        fail at this step ...
    STANDIN_FAIL_TIMES     ... in this many attempts (default: every attempt); `job=n,job2=m` per TrainingJob
    STANDIN_SIGTERM_SECONDS  seconds the checkpoint on SIGTERM takes to commit (an upload; default 0)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from tunewright.config import TrainingConfig, load_config
from tunewright.registry import AdapterRecord, DatasetProvenance, Registry, ReportSummary, TrainingJobRef
from tunewright.runs import REPORT, RESULT, Progress, RunResult, RunStore
from tunewright.storage import Storage, open_storage
from tunewright.training.checkpoints import CheckpointStore

stop = False


def on_sigterm(*_: object) -> None:
    global stop
    stop = True


def fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    if os.environ.get("TUNEWRIGHT_TERMINATION_LOG"):
        Path(os.environ["TUNEWRIGHT_TERMINATION_LOG"]).write_text(message)
    return code


def should_fail(run: RunStore, step: int) -> bool:
    at = os.environ.get("STANDIN_FAIL_AT")
    if at is None or step != int(at):
        return False
    times = os.environ.get("STANDIN_FAIL_TIMES")
    if times and "=" in times:
        times = dict(kv.split("=") for kv in times.split(",")).get(os.environ.get("TUNEWRIGHT_TRAININGJOB", ""))
    failed = len([k for k in run.dir.list("standin") if k.startswith("standin/failed-")])
    if times is not None and failed >= int(times):
        return False
    run.dir.write_text(f"standin/failed-{failed + 1}", "x")
    return True


def claim(run: RunStore) -> str | None:
    """Become the run's writer; the reason when an earlier writer is still alive."""
    key = "standin/writer"
    pid = int(run.dir.read_text(key)) if run.dir.exists(key) else None
    if pid is not None and pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pid = None
        if pid is not None:
            return f"two writers on {run.dir.uri}: pid {pid} of an earlier attempt is still running"
    run.dir.write_text(key, str(os.getpid()))
    return None


def other_node(total: int) -> int:
    """A node other than node 0 (TUNEWRIGHT_NODE_RANK > 0) trains along and writes nothing: only global rank 0
    writes the run. Here it sleeps through the steps."""
    for _ in range(total):
        if stop:
            return fail("interrupted by SIGTERM", 143)
        time.sleep(float(os.environ.get("STANDIN_STEP_SECONDS", "0.05")))
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    for flag in ("--config", "--storage", "--run-id", "--resume", "--metrics-port", "--dataset"):
        p.add_argument(flag)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)
    config = load_config(args.config)
    root = open_storage(args.storage)
    run = RunStore(root, args.run_id)
    if run.read_result() is not None:
        return 0
    total = config.training.max_steps or 20
    if int(os.environ.get("TUNEWRIGHT_NODE_RANK", "0")):
        return other_node(total)
    overlap = claim(run)
    if overlap:
        return fail(overlap, 3)
    every = config.checkpointing.every_steps or 5
    store = CheckpointStore(run.checkpoints, keep_last=config.checkpointing.keep_last, background=False)
    latest = store.latest() if args.resume in ("latest", "auto") else None
    step = latest.step if latest else 0
    resumed_from = latest.name if latest else None
    work = Path(tempfile.mkdtemp())

    def checkpoint(at: int) -> str:
        local = work / f"checkpoint-{at}"
        local.mkdir(exist_ok=True)
        (local / "state.json").write_text(json.dumps({"step": at}))
        store.commit(local, at, at / total, 1.0 / (1 + at))
        return f"checkpoint-{at}"

    last = latest.name if latest else None
    while step < total:
        if stop:
            time.sleep(float(os.environ.get("STANDIN_SIGTERM_SECONDS", "0")))
            last = checkpoint(step) if step else last
            run.write_progress(Progress(state="interrupted", step=step, total_steps=total, epoch=step / total,
                                        last_checkpoint=last))
            return fail(f"interrupted by SIGTERM at step {step}; checkpoint {last} committed", 143)
        time.sleep(float(os.environ.get("STANDIN_STEP_SECONDS", "0.05")))
        step += 1
        if should_fail(run, step):
            return fail(f"RuntimeError: stand-in failure at step {step}")
        if step % every == 0 or step == total:
            last = checkpoint(step)
        run.write_progress(Progress(state="running", step=step, total_steps=total, epoch=step / total,
                                    loss=2.0 / step, learning_rate=config.training.learning_rate,
                                    last_checkpoint=last, best_checkpoint=last))
    publish(root, run, config, total, last, resumed_from)
    return 0


def publish(root: Storage, run: RunStore, config: TrainingConfig, total: int, last: str | None,
            resumed_from: str | None, env: Mapping[str, str] = os.environ) -> None:
    """The end of a run, as tunewright-train writes it: report.json, the registry record (once per run),
    progress.json completed, then result.json (the commit marker). Job identity from the TUNEWRIGHT_* env."""
    report = {"finalTrainLoss": 2.0 / total, "bestEvalLoss": 1.0 / total, "steps": total, "epochs": 1.0,
              "trainingSeconds": 0.1, "stoppedEarly": False, "resumedFrom": resumed_from}
    run.dir.write_text(REPORT, json.dumps(report))
    registry, name = Registry(root), config.adapter_name()
    existing = next((r for r in (registry.get(name, v) for v in registry.versions(name)) if r.run_id == run.run_id),
                    None)
    job = env.get("TUNEWRIGHT_TRAININGJOB")
    record = existing or registry.register(AdapterRecord(
        name=name, version=registry.next_version(name), base_model=config.base_model, method=config.method,
        uri="", dataset=DatasetProvenance(id=config.dataset.id, uri=config.dataset.uri or "", digest="sha256:0"),
        run_id=run.run_id, config=config.to_dict(),
        training_job=TrainingJobRef(namespace=env.get("TUNEWRIGHT_NAMESPACE", ""), name=job,
                                    uid=env.get("TUNEWRIGHT_TRAININGJOB_UID")) if job else None,
        report=ReportSummary(final_loss=report["finalTrainLoss"], best_eval_loss=report["bestEvalLoss"],
                             steps=total, epochs=1.0, training_seconds=0.1),
    ), files={"adapter_config.json": b"{}", REPORT: json.dumps(report).encode()})
    run.write_progress(Progress(state="completed", step=total, total_steps=total, epoch=1.0, loss=2.0 / total,
                                last_checkpoint=last, best_checkpoint=last))
    run.dir.write_text(RESULT, RunResult(adapter_name=record.name, adapter_version=record.version,
                                         adapter_uri=record.uri, report_uri=f"{record.uri}/{REPORT}").to_json())

if __name__ == "__main__":
    sys.exit(main())
