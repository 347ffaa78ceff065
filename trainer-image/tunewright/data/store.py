"""Datasets by id: `<root>/datasets/<id>/meta.json` + `samples.jsonl` (+ audio files for audio datasets)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunewright.config import TYPE_RULES
from tunewright.data.rows import ROW_MODELS, Kind, Modality, Row
from tunewright.ids import check_id
from tunewright.storage import Storage, open_storage

META = "meta.json"
SAMPLES = "samples.jsonl"


class DatasetError(ValueError):
    pass


class DatasetMeta(BaseModel):
    """What `tunewright dataset show` prints and a Dataset custom resource mirrors."""

    model_config = ConfigDict(extra="ignore")

    id: str
    kind: Kind
    modality: Modality = "text"
    samples: int = Field(ge=0)
    digest: str = Field(description="sha256 of samples.jsonl (and audio files, for audio datasets)")
    created: str
    source: str | None = None


def parse_rows(lines: list[str], kind: Kind, source: str) -> list[Row]:
    """Validate JSONL lines; the first bad row raises with file, line number and field."""
    model = ROW_MODELS[kind]
    rows: list[Row] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{source}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(raw, dict):
            raise DatasetError(f"{source}:{number}: a row must be a JSON object")
        try:
            rows.append(model.model_validate(raw))
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "row"
            msg = "unknown field" if first["type"] == "extra_forbidden" else TYPE_RULES.get(
                first["type"], first["msg"].removeprefix("Value error, "))
            raise DatasetError(f"{source}:{number}: field '{field}': {msg} (a {kind} row is "
                               f"{_shape(kind)})") from None
    if not rows:
        raise DatasetError(f"{source}: no rows")
    return rows


def _shape(kind: Kind) -> str:
    return {
        "rated": "{prompt, completion, rating, tags?}",
        "preference": "{prompt, chosen, rejected}",
        "ranked": "{prompt, completions: [best, ..., worst]}",
    }[kind]


def digest_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class DatasetStore:
    def __init__(self, root: Storage | str | None = None):
        self.root = root if isinstance(root, Storage) else open_storage(root)
        self.datasets = self.root.child("datasets")

    def uri(self, dataset_id: str) -> str:
        return self.datasets.child(check_id(dataset_id, "dataset id")).uri

    def import_file(self, dataset_id: str, path: str | Path, kind: Kind, modality: Modality = "text") -> DatasetMeta:
        """Validate and store a JSONL file. An existing dataset is never overwritten."""
        check_id(dataset_id, "dataset id")
        path = Path(path)
        if self.datasets.exists(f"{dataset_id}/{META}"):
            raise DatasetError(f"dataset {dataset_id!r} already exists in {self.datasets.uri}; "
                               "choose another id (datasets are immutable)")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DatasetError(f"cannot read {path}: {err.strerror}") from None
        rows = parse_rows(data.decode("utf-8").splitlines(), kind, str(path))
        canonical = "".join(json.dumps(r.model_dump(), sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
        body = canonical.encode("utf-8")
        extra_digest = b""
        if modality == "audio":
            from tunewright.data.audio_files import store_audio_files  # only audio imports need decoders

            extra_digest = store_audio_files(rows, path.parent, self.datasets.child(dataset_id))
        meta = DatasetMeta(
            id=dataset_id, kind=kind, modality=modality, samples=len(rows),
            digest=digest_bytes(body + extra_digest), created=datetime.now(UTC).isoformat(timespec="seconds"),
            source=path.name,
        )
        ds = self.datasets.child(dataset_id)
        ds.write_bytes(SAMPLES, body)
        ds.write_text(META, meta.model_dump_json(indent=2))  # written last: the dataset's commit marker
        return meta

    def list(self) -> list[DatasetMeta]:
        return [self.meta(d) for d in self.datasets.list_dirs() if self.datasets.exists(f"{d}/{META}")]

    def meta(self, dataset_id: str) -> DatasetMeta:
        check_id(dataset_id, "dataset id")
        try:
            return DatasetMeta.model_validate_json(self.datasets.read_bytes(f"{dataset_id}/{META}"))
        except FileNotFoundError:
            known = ", ".join(d for d in self.datasets.list_dirs()) or "none"
            raise DatasetError(f"dataset {dataset_id!r} not found in {self.datasets.uri} (known: {known})") from None

    def rows(self, dataset_id: str) -> list[Row]:
        meta = self.meta(dataset_id)
        return load_rows(self.datasets.child(dataset_id), meta)


def load_rows(ds: Storage, meta: DatasetMeta) -> list[Row]:
    lines = ds.read_text(SAMPLES).splitlines()
    return parse_rows(lines, meta.kind, f"{ds.uri}/{SAMPLES}")


def open_dataset(uri: str) -> tuple[Storage, DatasetMeta]:
    """A dataset directory given by URI (a TrainingJob's `dataset.uri`)."""
    ds = open_storage(uri)
    try:
        meta = DatasetMeta.model_validate_json(ds.read_bytes(META))
    except FileNotFoundError:
        raise DatasetError(f"{uri} holds no dataset ({META} missing)") from None
    return ds, meta
