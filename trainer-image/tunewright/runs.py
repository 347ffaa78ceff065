"""A training run's layout in storage: what the trainer writes and the operator reads.

    runs/<run-id>/config.json          the resolved configuration
    runs/<run-id>/progress.json        latest progress (rewritten at each log interval)
    runs/<run-id>/metrics.jsonl        one JSON object per log event
    runs/<run-id>/checkpoints/<name>/  checkpoint files; `manifest.json` is written last (the commit)
    runs/<run-id>/adapter/             the final PEFT adapter
    runs/<run-id>/report.json          the training report
    runs/<run-id>/report.html          the same as a self-contained page (plots, clips inlined)
    runs/<run-id>/result.json          written after registration: the run is complete
    runs/<run-id>/lease.json           who writes the run (one trainer at a time: see tunewright.lease)

No torch here: the operator imports this module.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from tunewright.ids import check_id
from tunewright.storage import Storage

CONFIG = "config.json"
PROGRESS = "progress.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
REPORT = "report.json"
REPORT_PAGE = "report.html"
RESULT = "result.json"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Record(BaseModel):
    """A camelCase JSON record (same convention as the configuration)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


class Progress(Record):
    """`progress.json`: the trainer's latest state, cheap for the operator to poll."""

    state: Literal["starting", "running", "completed", "failed", "interrupted"] = "starting"
    step: int = 0
    total_steps: int | None = None
    epoch: float = 0.0
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None
    message: str | None = None
    updated: str = Field(default_factory=now_iso)


class RunResult(Record):
    """`result.json`: the run finished and its adapter is registered (its presence makes retries no-ops)."""

    adapter_name: str
    adapter_version: int
    adapter_uri: str
    report_uri: str
    report_page_uri: str | None = None  # report.html, beside report_uri


def new_run_id(name: str) -> str:
    """`<name>-<utc time>-<random>`: sortable by start time, unique even for runs started in the same second."""
    suffix = f"{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    return f"{name[: 63 - len(suffix) - 1]}-{suffix}"


class RunStore:
    """Typed access to one run directory."""

    def __init__(self, root: Storage, run_id: str):
        self.run_id = check_id(run_id, "run id")
        self.dir = root.child("runs", run_id)

    @property
    def checkpoints(self) -> Storage:
        return self.dir.child(CHECKPOINTS)

    def write_progress(self, progress: Progress) -> None:
        self.dir.write_text(PROGRESS, progress.to_json())

    def read_progress(self) -> Progress | None:
        return self._read(PROGRESS, Progress)

    def read_result(self) -> RunResult | None:
        return self._read(RESULT, RunResult)

    def read_report(self) -> dict[str, Any] | None:
        return self._read(REPORT, None)

    def _read(self, key: str, model: type[Any] | None) -> Any:
        """A run file parsed (and validated by `model`), None when absent; ValueError naming the file."""
        try:
            raw = self.dir.read_bytes(key)
        except FileNotFoundError:
            return None
        try:
            return json.loads(raw) if model is None else model.model_validate_json(raw)
        except ValueError as err:
            first = err.errors()[0] if isinstance(err, ValidationError) else None
            why = f"{'.'.join(map(str, first['loc'])) or '(top level)'}: {first['msg']}" if first else str(err)
            raise ValueError(f"{self.dir.uri}/{key} is corrupt: {why}") from None
