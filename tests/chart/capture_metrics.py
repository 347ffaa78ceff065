"""Record what Prometheus would scrape from the operator's and the trainers' /metrics endpoints, minute by
minute, while the real code lives through the situations the alerts are about. Run as a script in a fresh
process (as an operator pod starts one): `python capture_metrics.py OUT.json` writes
{source: [exposition text at minute 0, at minute 1, ...]}, fetched over HTTP from the real exporters.

- "operator": the operator's handlers registered and its Kopf startup handler run (which starts the
  exporter), then scraped at start-up; before minute 3 one TrainingJob fails for good (its pod failed, no
  retries left) and one handler run raises.
- one source per trainer job (its TrainerMetrics endpoint, driven through RunLogCallback with a clock that
  starts at 0, the time promtool's evaluation starts at): see TRAINER_JOBS.

tests/chart/promtool_series.py turns the recording into promtool input series.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

OPERATOR_MINUTES = 20
TRAINER_MINUTES = 130
FAILS_AT_MINUTE = 3


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


# --- the operator ---

class ApiDown(Exception):
    pass


class StubKube:
    """Just enough of tunewright_operator.kube.Kube for one running job whose pod has failed."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}

    def wrote(self, plural: str, namespace: str, name: str, resource_version: str | None) -> bool:
        return False

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        if name == "unreachable":
            raise ApiDown("the API server did not answer")
        return self.jobs.get((namespace, name))

    def list(self, plural: str, namespaces: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        return list(self.jobs.values())

    def list_pods(self, namespaces: tuple[str, ...], selector: str) -> list[dict[str, Any]]:
        return []  # the failed pod is past; nothing left to stop or to count as busy

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pods.get((namespace, name))

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        job = self.jobs[namespace, name]
        job["status"] = {k: v for k, v in {**job.get("status", {}), **status}.items() if v is not None}

    def delete_pod(self, namespace: str, name: str) -> None:
        self.pods.pop((namespace, name), None)

    def delete_service(self, namespace: str, name: str) -> None:
        pass


def failing_job(kube: StubKube) -> None:
    """A DPO job on its only attempt (retries: 0) whose trainer pod exited with 1."""
    kube.jobs["ml", "songs-dpo"] = {
        "apiVersion": "tunewright.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "songs-dpo", "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": {"method": "dpo", "name": "songs-dpo", "baseModel": "tiny-llama", "dataset": {"id": "songs"},
                 "retries": 0},
        "status": {"phase": "Running", "attempts": 1, "podName": "songs-dpo-1", "runId": "r",
                   "startTime": "2026-01-01T00:00:00Z"},
    }
    kube.pods["ml", "songs-dpo-1"] = {
        "metadata": {"name": "songs-dpo-1", "namespace": "ml"},
        "status": {"phase": "Failed", "containerStatuses": [
            {"name": "trainer", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]},
    }


INDEXES: dict[str, Any] = {name: {} for name in ("trainingjob_index", "trainingjob_phase_index", "unfinished_pod_index",
                                             "finished_pod_index")}  # Kopf passes its indexes


def operator_recording(port: int) -> list[str]:
    import kopf

    from tunewright_operator import handlers
    from tunewright_operator.settings import Settings

    kube = StubKube()
    settings = Settings.parse(["--namespace", "ml", "--storage", "file:///nonexistent",
                               "--metrics-port", str(port), "--health-port", "0"])
    events: list[tuple[Any, ...]] = []
    handlers.post_event = lambda *event: events.append(event)  # Kopf posts Events only inside its own loop
    handlers.register(settings, kube)  # type: ignore[arg-type]
    registry = kopf.get_default_registry()
    # Kopf has no public lookup of registered handlers; its registries' handler lists are what it runs.
    fns: dict[str, Callable[..., Any]] = {
        h.id.rsplit(".", 1)[-1]: h.fn
        for h in (*registry._activities.get_all_handlers(), *registry._watching.get_all_handlers())}
    fns["startup"](settings=kopf.OperatorSettings(), logger=logging.getLogger("capture"))
    texts = []
    for minute in range(OPERATOR_MINUTES):
        if minute == FAILS_AT_MINUTE:
            failing_job(kube)
            fns["trainingjob_event"](type="MODIFIED", namespace="ml", name="songs-dpo",
                                     body=kube.jobs["ml", "songs-dpo"], **INDEXES)
            assert kube.jobs["ml", "songs-dpo"]["status"]["phase"] == "Failed", kube.jobs
            assert [e[2] for e in events] == ["Failed"], events
            try:
                fns["trainingjob_event"](type="MODIFIED", namespace="ml", name="unreachable",
                                         body={"metadata": {"name": "unreachable"}}, **INDEXES)
            except ApiDown:
                pass
            else:
                raise AssertionError("the handler was meant to raise")
        texts.append(scrape(port))
    return texts


# --- the trainers ---

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TrainerJob:
    """One trainer's exporter, fed through the RunLogCallback hooks HF Trainer calls."""

    def __init__(self, name: str, method: str, clock: Clock, run_dir: Path, total_steps: int, epochs: int,
                 every_steps: int | None, log_every: int):
        from tunewright.runs import RunStore
        from tunewright.storage import open_storage
        from tunewright.training.callbacks import RunLogCallback, TerminalDisplay
        from tunewright.training.prometheus import TrainerMetrics

        self.metrics = TrainerMetrics(0, {"trainingjob": name, "namespace": "ml", "method": method},
                                      addr="127.0.0.1", clock=clock)
        run = RunStore(open_storage(f"file://{run_dir}"), name)
        self.callback = RunLogCallback(run, 8, SimpleNamespace(tokens_seen=0), TerminalDisplay(enabled=False),
                                       self.metrics)
        self.args = SimpleNamespace(save_strategy="steps" if every_steps else "epoch", save_steps=every_steps,
                                    world_size=1)
        self.state = SimpleNamespace(global_step=0, max_steps=total_steps, num_train_epochs=epochs, epoch=0.0,
                                     is_world_process_zero=True)
        self.log_every = log_every

    def begin(self) -> None:
        self.callback.on_train_begin(self.args, self.state, None)

    def step(self, loss: float) -> None:
        self.state.global_step += 1
        self.state.epoch = self.state.global_step * self.state.num_train_epochs / self.state.max_steps
        self.callback.on_step_end(self.args, self.state, None)
        if self.state.global_step % self.log_every == 0:
            self.callback.on_log(self.args, self.state, None,
                                 logs={"loss": loss, "learning_rate": 1e-4, "grad_norm": 1.0})

    def committed(self, upload_seconds: float) -> None:  # as Run._wire_commits does
        self.metrics.checkpoint_committed(upload_seconds)


# name: (method, total steps, epochs, checkpointing.everySteps, log every, {minute: what happens})
# A step is "s", a step with a NaN / infinite loss "nan" / "inf", a committed checkpoint "c".
def _every(minutes: int, start: int, stop: int, what: str) -> dict[int, list[str]]:
    return {m: [what] for m in range(start, stop, minutes)}


def _merge(*plans: dict[int, list[str]]) -> dict[int, list[str]]:
    merged: dict[int, list[str]] = {}
    for plan in plans:
        for minute, events in plan.items():
            merged.setdefault(minute, []).extend(events)
    return merged


TRAINER_JOBS: dict[str, tuple[str, int, int, int | None, int, dict[int, list[str]]]] = {
    # healthy but slow: 2 minutes a step, a log line every 10 steps (20 minutes), one checkpoint per
    # 45-step epoch (90 minutes; committed at minute 90)
    "slow": ("sft", 90, 2, None, 10, _merge(_every(2, 2, TRAINER_MINUTES, "s"), {90: ["c"]})),
    # a step a minute until step 10, then hangs (the process lives on)
    "stuck": ("sft", 100, 1, 50, 5, _every(1, 1, 11, "s")),
    # at its last step (20 of 20) from minute 20: waiting on the final save is not a stall
    "finishing": ("sft", 20, 1, 10, 5, _every(1, 1, 21, "s")),
    # a step a minute, a checkpoint due every 10 steps; only the first one is ever committed
    "failing-uploads": ("dpo", 200, 1, 10, 5, _merge(_every(1, 1, TRAINER_MINUTES, "s"), {10: ["c"]})),
    # a step a minute, a checkpoint every 10 steps, committed
    "fresh": ("dpo", 200, 1, 10, 5, _merge(_every(1, 1, TRAINER_MINUTES, "s"), _every(10, 10, TRAINER_MINUTES, "c"))),
    # a step a minute, logging every step; the loss turns NaN at step 3
    "broken": ("sft", 200, 1, 50, 1, {**_every(1, 1, 3, "s"), **_every(1, 3, TRAINER_MINUTES, "nan")}),
    # as broken, with an infinite loss
    "exploded": ("dpo", 200, 1, 50, 1, {**_every(1, 1, 2, "s"), **_every(1, 2, TRAINER_MINUTES, "inf")}),
}


def trainer_recordings(tmp: Path) -> dict[str, list[str]]:
    clock = Clock()
    jobs = {name: TrainerJob(name, method, clock, tmp / name, total, epochs, every, log_every)
            for name, (method, total, epochs, every, log_every, _) in TRAINER_JOBS.items()}
    for job in jobs.values():
        job.begin()
    texts: dict[str, list[str]] = {name: [] for name in jobs}
    for minute in range(TRAINER_MINUTES):
        clock.now = minute * 60.0
        for name, job in jobs.items():
            for event in TRAINER_JOBS[name][5].get(minute, []):
                if event == "c":
                    job.committed(upload_seconds=4.0)
                else:
                    job.step({"s": 0.5, "nan": math.nan, "inf": math.inf}[event])
            assert job.metrics.port is not None
            texts[name].append(scrape(job.metrics.port))
    for job in jobs.values():
        job.metrics.close()
    return texts


def main(out: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    recording = {"operator": operator_recording(port), **trainer_recordings(out.parent)}
    out.write_text(json.dumps(recording))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
