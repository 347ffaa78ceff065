"""Datasets by id: `<root>/datasets/<id>/meta.json` + `samples.jsonl` (+ audio files for audio datasets)."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunewright.config import TYPE_RULES
from tunewright.data.rows import ROW_MODELS, Kind, Modality, Row
from tunewright.documents import DocumentError, decode, no_duplicate_keys
from tunewright.ids import check_id
from tunewright.storage import Storage, dataset_storage, open_storage

log = logging.getLogger(__name__)

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
            raw = json.loads(line, object_pairs_hook=no_duplicate_keys)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{source}:{number}: not valid JSON ({err.msg})") from None
        except DocumentError as err:
            raise DatasetError(f"{source}:{number}: {err}") from None
        except RecursionError:
            raise DatasetError(f"{source}:{number}: nested too deeply") from None
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


def canonical_lines(rows: list[Row]) -> list[str]:
    return [json.dumps(r.model_dump(), sort_keys=True, ensure_ascii=False) + "\n" for r in rows]


class DatasetStore:
    """Datasets are published by exclusive writes, so that of two imports of one id exactly one wins and
    nothing of the winner is overwritten: samples.jsonl (and an audio dataset's manifest) first, each
    created only if absent or already holding the same bytes (the retry of an interrupted import of the
    same file); then the audio files, whose bytes the manifest fixes; meta.json last, the commit marker,
    created only if absent."""

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
            raise self._exists(dataset_id)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DatasetError(f"cannot read {path}: {err.strerror}") from None
        rows = parse_rows(decode(data, str(path), max_bytes=None).splitlines(), kind, str(path))
        lines = canonical_lines(rows)
        if dupes := len(lines) - len(set(lines)):
            log.warning("%s: %d of %d rows repeat an earlier row exactly; they are kept (each counts in training)",
                        path, dupes, len(rows))
        body = "".join(lines).encode("utf-8")
        manifest = b""
        if modality == "audio":
            from tunewright.data.audio_files import check_audio_files  # only audio imports need decoders

            manifest = check_audio_files(rows, path)
        meta = DatasetMeta(
            id=dataset_id, kind=kind, modality=modality, samples=len(rows),
            digest=digest_bytes(body + manifest), created=datetime.now(UTC).isoformat(timespec="seconds"),
            source=path.name,
        )
        ds = self.datasets.child(dataset_id)
        self._claim(ds, dataset_id, SAMPLES, body)
        if modality == "audio":
            from tunewright.data.audio_files import MANIFEST, copy_audio_files

            self._claim(ds, dataset_id, MANIFEST, manifest)
            copy_audio_files(manifest, path.parent, ds)
        try:
            # The commit marker. (Not compared with ours on a conflict: an identical import in the same second
            # writes the same bytes, and exactly one of them must win.)
            ds.write_text(META, meta.model_dump_json(indent=2), exclusive=True)
        except FileExistsError:
            raise self._exists(dataset_id) from None
        return meta

    def _exists(self, dataset_id: str) -> DatasetError:
        return DatasetError(f"dataset {dataset_id!r} already exists in {self.datasets.uri}; "
                            "choose another id (datasets are immutable)")

    def _claim(self, ds: Storage, dataset_id: str, key: str, data: bytes) -> None:
        try:
            ds.write_bytes(key, data, exclusive=True)
        except FileExistsError:
            if ds.exists(META):
                raise self._exists(dataset_id) from None
            if ds.read_bytes(key) != data:
                raise DatasetError(f"dataset {dataset_id!r} is being imported from other data by another process, "
                                   f"or such an import was interrupted ({ds.uri}/{key} exists without {META}); "
                                   f"choose another id, or delete {ds.uri} if no import is running") from None

    def list(self) -> list[DatasetMeta]:
        """Every committed dataset; one whose meta.json is unreadable is reported (by path) and skipped."""
        found = []
        for d in self.datasets.list_dirs():
            if not self.datasets.exists(f"{d}/{META}"):
                continue
            try:
                found.append(self.meta(d))
            except (DatasetError, ValueError) as err:
                log.warning("skipping dataset %s: %s", d, err)
        return found

    def meta(self, dataset_id: str) -> DatasetMeta:
        check_id(dataset_id, "dataset id")
        try:
            raw = self.datasets.read_bytes(f"{dataset_id}/{META}")
        except FileNotFoundError:
            known = ", ".join(d for d in self.datasets.list_dirs()) or "none"
            raise DatasetError(f"dataset {dataset_id!r} not found in {self.datasets.uri} (known: {known})") from None
        return parse_meta(raw, f"{self.datasets.uri}/{dataset_id}/{META}")

    def rows(self, dataset_id: str) -> list[Row]:
        meta = self.meta(dataset_id)
        return load_rows(self.datasets.child(dataset_id), meta)


def parse_meta(raw: bytes, where: str) -> DatasetMeta:
    try:
        return DatasetMeta.model_validate_json(raw)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise DatasetError(f"{where} is corrupt: {field}: {first['msg']}") from None


def load_rows(ds: Storage, meta: DatasetMeta) -> list[Row]:
    """The dataset's rows, after checking its bytes against the digest and row count recorded at import."""
    body = ds.read_bytes(SAMPLES)
    manifest = b""
    if meta.modality == "audio":
        from tunewright.data.audio_files import MANIFEST

        manifest = ds.read_bytes(MANIFEST)
    if digest_bytes(body + manifest) != meta.digest:
        raise DatasetError(f"{ds.uri}/{SAMPLES} does not match its {META} (digest {meta.digest[:19]}…, "
                           f"{meta.samples} rows): the dataset was changed or damaged after import; re-import it "
                           "under a new id")
    rows = parse_rows(body.decode("utf-8").splitlines(), meta.kind, f"{ds.uri}/{SAMPLES}")
    if len(rows) != meta.samples:
        raise DatasetError(f"{ds.uri}/{SAMPLES} holds {len(rows)} rows, {META} says {meta.samples}")
    return rows


def open_dataset(uri: str) -> tuple[Storage, DatasetMeta]:
    """A dataset directory given by URI (a TrainingJob's `dataset.uri`)."""
    ds = dataset_storage(uri)
    try:
        raw = ds.read_bytes(META)
    except FileNotFoundError:
        raise DatasetError(f"{uri} holds no dataset ({META} missing)") from None
    return ds, parse_meta(raw, f"{ds.uri}/{META}")
