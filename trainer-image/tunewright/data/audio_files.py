"""Audio files of audio datasets: validation and copy at import, decoding and resampling at training.

Rows of an audio dataset name their samples by path relative to the JSONL file (at import) and to the
dataset directory (once stored). Import decodes every referenced file, so a dataset never holds a missing
or broken clip, and copies the files into the dataset; the importer also stores the manifest
`audio.sha256` (`<sha256>  <path>` lines): its bytes go into the dataset digest, and training keys its
encoded-clip cache by these hashes.

Decoding uses libsndfile (through soundfile, whose wheels bundle it): wav, flac, ogg/vorbis/opus and mp3;
resampling uses libsoxr (through soxr).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import soundfile as sf
import soxr

from tunewright.data.rows import PreferenceRow, RankedRow, RatedRow, Row
from tunewright.data.store import DatasetError
from tunewright.storage import Storage

MANIFEST = "audio.sha256"
FORMATS = "wav, flac, ogg, mp3"
_SHOWN_PROBLEMS = 5


class AudioDecodeError(ValueError):
    pass


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """(samples as float32 of shape (channels, frames), sample rate) of an encoded audio file."""
    try:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except sf.LibsndfileError as err:
        raise AudioDecodeError(err.error_string.strip().rstrip(".")) from None  # without the BytesIO repr
    except (RuntimeError, TypeError, ValueError) as err:
        raise AudioDecodeError(str(err).strip() or type(err).__name__) from None
    if wave.shape[0] == 0:
        raise AudioDecodeError("the file holds no audio frames")
    return np.ascontiguousarray(wave.T), int(rate)


def conform(wave: np.ndarray, rate: int, target_rate: int, channels: int) -> np.ndarray:
    """`wave` (channels, frames) resampled to `target_rate` and mixed to `channels` (1: mono, 2: stereo)."""
    if wave.shape[0] != channels:
        mono = wave.mean(axis=0, keepdims=True)
        wave = mono if channels == 1 else np.repeat(mono, channels, axis=0)
    if rate != target_rate:
        wave = soxr.resample(wave.T, rate, target_rate).T  # band-limited (anti-aliased) resampling
    return np.ascontiguousarray(wave, dtype=np.float32)


def audio_refs(row: Row) -> list[tuple[str, str]]:
    """(field, path) of every audio sample a row references."""
    if isinstance(row, RatedRow):
        return [("completion", row.completion)]
    if isinstance(row, PreferenceRow):
        return [("chosen", row.chosen), ("rejected", row.rejected)]
    assert isinstance(row, RankedRow)
    return [(f"completions[{i}]", c) for i, c in enumerate(row.completions)]


def _check_path(path: str) -> str | None:
    pure = PurePosixPath(path.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        return "must be a path relative to the dataset file, without '..'"
    return None


def _problem(source_dir: Path, path: str) -> tuple[str | None, str | None]:
    """(problem, sha256) for one referenced file."""
    bad = _check_path(path)
    if bad:
        return bad, None
    file = source_dir / path
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return f"not found in {source_dir}", None
    except OSError as err:
        return f"cannot be read ({err.strerror})", None
    try:
        decode_audio(data)
    except AudioDecodeError as err:
        return f"cannot be decoded as audio ({err}; supported: {FORMATS})", None
    return None, hashlib.sha256(data).hexdigest()


def check_audio_files(rows: Sequence[Row], source_dir: Path) -> bytes:
    """Validate every referenced file and return the manifest (`<sha256>  <path>` lines, sorted).

    Raises DatasetError naming the row, field and file of each problem (the first few) before anything
    is copied.
    """
    source_dir = Path(source_dir)
    digests: dict[str, str] = {}
    problems: list[str] = []
    for number, row in enumerate(rows, start=1):
        for field, path in audio_refs(row):
            if path in digests:
                continue
            problem, sha = _problem(source_dir, path)
            if problem:
                problems.append(f"row {number}, field '{field}': audio file {path!r} {problem}")
            else:
                digests[path] = sha or ""
    if problems:
        more = len(problems) - _SHOWN_PROBLEMS
        raise DatasetError("; ".join(problems[:_SHOWN_PROBLEMS]) + (f" (and {more} more)" if more > 0 else ""))
    return "".join(f"{digests[p]}  {p}\n" for p in sorted(digests)).encode("utf-8")


def copy_audio_files(manifest: bytes, source_dir: Path, dataset: Storage) -> None:
    """Copy the files a manifest lists into `dataset` (the manifest itself is the caller's to write)."""
    for line in manifest.decode("utf-8").splitlines():
        path = line.split("  ", 1)[1]
        dataset.upload_file(Path(source_dir) / path, path)


def read_manifest(dataset: Storage) -> dict[str, str]:
    """path -> sha256 from a stored dataset's manifest (empty when the dataset has none)."""
    try:
        text = dataset.read_text(MANIFEST)
    except FileNotFoundError:
        return {}
    return {path: sha for sha, path in (line.split("  ", 1) for line in text.splitlines() if line.strip())}
