"""The adapter registry: `<root>/adapters/<name>/<version>/` with the PEFT files, report.json, report.html (and
the clips it plays, under samples/) and record.json.

record.json is the provenance record; in-cluster the operator turns it into an `Adapter` custom resource.
Versions are positive integers, assigned in order; a version that exists is never overwritten.
No torch here: the operator imports this module.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tunewright.ids import check_id
from tunewright.runs import Record, now_iso
from tunewright.storage import Storage

RECORD = "record.json"


class RegistryError(ValueError):
    pass


class DatasetProvenance(Record):
    id: str | None = None
    uri: str
    digest: str
    kind: str | None = None


class TrainingJobRef(Record):
    namespace: str
    name: str
    uid: str | None = None


class ReportSummary(Record):
    """The report fields an Adapter resource shows."""

    final_loss: float | None = None
    best_eval_loss: float | None = None
    training_seconds: float | None = None
    epochs: float | None = None
    steps: int | None = None
    stopped_early: bool = False
    html_uri: str | None = Field(None, description="The report page (report.html): curves, base vs adapter outputs.")


class AdapterRecord(Record):
    name: str
    version: int = Field(ge=1)
    base_model: str
    base_model_revision: str | None = None
    method: str
    uri: str = Field(description="The PEFT directory of this version")
    dataset: DatasetProvenance
    run_id: str
    training_job: TrainingJobRef | None = None
    config: dict[str, Any]
    report: ReportSummary
    created: str = Field(default_factory=now_iso)


class Registry:
    def __init__(self, root: Storage):
        self.adapters = root.child("adapters")

    def versions(self, name: str) -> list[int]:
        check_id(name, "adapter name")
        return sorted(int(v) for v in self.adapters.list_dirs(name) if v.isdigit()
                      and self.adapters.exists(f"{name}/{v}/{RECORD}"))

    def next_version(self, name: str) -> int:
        return max(self.versions(name), default=0) + 1

    def version_dir(self, name: str, version: int) -> Storage:
        return self.adapters.child(check_id(name, "adapter name"), str(version))

    def register(self, record: AdapterRecord, files: dict[str, bytes] | None = None,
                 local_dir: Any = None) -> AdapterRecord:
        """Store the adapter files then record.json (the commit marker). Refuses an existing version."""
        if self.adapters.exists(f"{record.name}/{record.version}/{RECORD}"):
            raise RegistryError(
                f"adapter {record.name} version {record.version} already exists; "
                f"the next free version is {self.next_version(record.name)}"
            )
        target = self.version_dir(record.name, record.version)
        record = record.model_copy(update={"uri": target.uri})
        if local_dir is not None:
            target.upload_dir(local_dir, "")
        for key, data in (files or {}).items():
            target.write_bytes(key, data)
        target.write_text(RECORD, record.to_json())
        return record

    def get(self, name: str, version: int | None = None) -> AdapterRecord:
        versions = self.versions(name)
        if not versions:
            raise RegistryError(f"no adapter named {name!r} in {self.adapters.uri}")
        version = versions[-1] if version is None else version
        if version not in versions:
            raise RegistryError(f"adapter {name!r} has no version {version} (versions: {versions})")
        return AdapterRecord.model_validate_json(self.adapters.read_bytes(f"{name}/{version}/{RECORD}"))

    def list(self) -> list[AdapterRecord]:
        return [self.get(name, v) for name in self.adapters.list_dirs() for v in self.versions(name)]
