"""The adapter registry: `<root>/adapters/<name>/<version>/` with the PEFT files, report.json, report.html (and
the clips it plays, under samples/) and record.json.

record.json is the provenance record; in-cluster the operator turns it into an `Adapter` custom resource.
Versions are positive integers, assigned in order; a version that exists is never overwritten: every file
of a version is created by an exclusive write (record.json, the commit marker, last), so of two concurrent
registrations of one version exactly one wins and the other gets VersionTaken (and may try the next one). A version
directory without record.json (a registration cut short) is never reused. A corrupt record.json is
reported by its path; listing skips it (with a warning) so that it never hides the others.
No torch here: the operator imports this module.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from pydantic import Field, ValidationError

from tunewright.ids import check_id
from tunewright.runs import Record, now_iso
from tunewright.storage import Storage

RECORD = "record.json"

log = logging.getLogger(__name__)


class RegistryError(ValueError):
    pass


class VersionTaken(RegistryError):
    """A concurrent registration wrote this version first; nothing of it was overwritten."""


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
        """One more than any version directory, committed or not (an interrupted one is never reused)."""
        check_id(name, "adapter name")
        return max((int(v) for v in self.adapters.list_dirs(name) if v.isdigit()), default=0) + 1

    def version_dir(self, name: str, version: int) -> Storage:
        return self.adapters.child(check_id(name, "adapter name"), str(version))

    def register(self, record: AdapterRecord, files: dict[str, bytes] | None = None,
                 local_dir: Any = None) -> AdapterRecord:
        """Store the adapter files then record.json (the commit marker), each by an exclusive write.
        Refuses an existing version; VersionTaken when a concurrent registration claims it meanwhile."""
        if self.adapters.exists(f"{record.name}/{record.version}/{RECORD}"):
            raise RegistryError(
                f"adapter {record.name} version {record.version} already exists; "
                f"the next free version is {self.next_version(record.name)}"
            )
        target = self.version_dir(record.name, record.version)
        record = record.model_copy(update={"uri": target.uri})
        try:
            if local_dir is not None:
                target.upload_dir(local_dir, "", exclusive=True)
            for key, data in (files or {}).items():
                target.write_bytes(key, data, exclusive=True)
            target.write_text(RECORD, record.to_json(), exclusive=True)
        except FileExistsError as err:
            if target.exists(RECORD) and target.read_text(RECORD) == record.to_json():
                return record  # ours: a retried PUT whose first response was lost
            raise VersionTaken(f"adapter {record.name} version {record.version} was taken by a concurrent "
                               f"registration ({err})") from None
        return record

    def get(self, name: str, version: int | None = None) -> AdapterRecord:
        """The record of `name`'s `version` (its latest when None). A given version is one read, not a listing
        of every version: the operator reads one at each job's completion."""
        if version is not None:
            check_id(name, "adapter name")
            with contextlib.suppress(FileNotFoundError):
                return self._read(name, version)
        versions = self.versions(name)
        if not versions:
            raise RegistryError(f"no adapter named {name!r} in {self.adapters.uri}")
        version = versions[-1] if version is None else version
        if version not in versions:
            raise RegistryError(f"adapter {name!r} has no version {version} (versions: {versions})")
        return self._read(name, version)

    def _read(self, name: str, version: int) -> AdapterRecord:
        key = f"{name}/{version}/{RECORD}"
        try:
            return AdapterRecord.model_validate_json(self.adapters.read_bytes(key))
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise RegistryError(f"{self.adapters.uri}/{key} is corrupt: {field}: {first['msg']}") from None

    def list(self) -> list[AdapterRecord]:
        """Every readable record; a corrupt one is logged by path and skipped."""
        records = []
        for name in self.adapters.list_dirs():
            try:
                versions = self.versions(name)
            except ValueError as err:  # a directory that is not an adapter name
                log.warning("skipping %s/%s: %s", self.adapters.uri, name, err)
                continue
            for version in versions:
                try:
                    records.append(self._read(name, version))
                except RegistryError as err:
                    log.warning("skipping %s", err)
        return records

    def check(self) -> None:
        """Fail early, before training, when the registry cannot be read at all (e.g. access denied).
        Corrupt records only produce warnings: they are skipped."""
        self.list()
