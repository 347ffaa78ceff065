"""Audio files of audio datasets: validation and copy at import, decoding and resampling at training.

Rows of an audio dataset name their samples by path relative to the JSONL file (at import) and to the
dataset directory (once stored). Import decodes every referenced file, so a dataset never holds a missing
or broken clip, and copies the files into the dataset; the importer also stores the manifest
`audio.sha256` (`<sha256>  <path>` lines): its bytes go into the dataset digest, and training keys its
encoded-clip cache by these hashes.

Import refuses, with one line naming the JSONL file, line, field and audio file: a path that is absolute,
holds '..' or is missing; a name whose extension is not one of EXTENSIONS, or names another format than the
content holds; an empty file, one libsndfile cannot decode, one whose header gives no sample rate or
channel count, and a clip of zero frames. Any sample rate and channel count are accepted as they are:
training mixes and resamples each clip to the base model's format (`conform`). Import sets no length
limit; training keeps the first `data.maxLength` codec frames of each clip.

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
# Extension -> the libsndfile container formats a file so named may hold.
EXTENSIONS = {".wav": ("WAV", "WAVEX", "RF64"), ".flac": ("FLAC",), ".ogg": ("OGG",), ".oga": ("OGG",),
              ".opus": ("OGG",), ".mp3": ("MP3",)}
_SHOWN_PROBLEMS = 5


class AudioDecodeError(ValueError):
    """Why a file is not a usable clip, phrased to follow "audio file 'x.wav' ..."."""


def _open(data: bytes) -> tuple[np.ndarray, int, str]:
    """(samples (channels, frames) as float32, sample rate, libsndfile container format) of an audio file."""
    if not data:
        raise AudioDecodeError("is empty (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            wave, rate, container = f.read(dtype="float32", always_2d=True), f.samplerate, f.format
    except sf.LibsndfileError as err:
        reason = err.error_string.strip().rstrip(".")  # without the BytesIO repr
        if "SF_INFO struct incomplete" in reason or "Channel count is zero" in reason:
            raise AudioDecodeError("has no sample rate or no channel count in its header") from None
        raise AudioDecodeError(f"cannot be decoded as audio ({reason}; supported: {FORMATS})") from None
    except (RuntimeError, TypeError, ValueError) as err:
        reason = str(err).strip() or type(err).__name__
        raise AudioDecodeError(f"cannot be decoded as audio ({reason}; supported: {FORMATS})") from None
    if rate <= 0:
        raise AudioDecodeError("has no sample rate in its header")
    if wave.shape[0] == 0:
        raise AudioDecodeError("holds no audio frames (a zero-length clip)")
    return np.ascontiguousarray(wave.T), int(rate), container


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """(samples as float32 of shape (channels, frames), sample rate) of an encoded audio file."""
    wave, rate, _ = _open(data)
    return wave, rate


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


def _check_name(path: str) -> str | None:
    pure = PurePosixPath(path.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        return "is outside the dataset: use a path relative to the JSONL file's folder, without '..'"
    if pure.suffix.lower() not in EXTENSIONS:
        return f"has extension {pure.suffix or '(none)'!r}; allowed: {', '.join(EXTENSIONS)}"
    return None


def _problem(source_dir: Path, path: str) -> tuple[str | None, str | None]:
    """(problem, sha256) for one referenced file."""
    bad = _check_name(path)
    if bad:
        return bad, None
    file = source_dir / path
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return f"is not found in {source_dir}", None
    except OSError as err:
        return f"cannot be read ({err.strerror})", None
    try:
        _, _, container = _open(data)
    except AudioDecodeError as err:
        return str(err), None
    suffix = PurePosixPath(path).suffix.lower()
    if container not in EXTENSIONS[suffix]:
        return f"holds {container} audio but is named {suffix}: rename it to match its format", None
    return None, hashlib.sha256(data).hexdigest()


def _row_lines(source: Path) -> list[int]:
    """Line number of each row in the JSONL file (rows are its non-blank lines, as parse_rows reads them)."""
    lines = source.read_bytes().decode("utf-8").splitlines()
    return [number for number, line in enumerate(lines, start=1) if line.strip()]


def check_audio_files(rows: Sequence[Row], source: Path) -> bytes:
    """Validate every file the rows of JSONL file `source` reference and return the manifest (`<sha256>  <path>`
    lines, sorted).

    Raises DatasetError naming the file, line, field and audio file of each problem (the first few) before
    anything is copied.
    """
    source = Path(source)
    source_dir = source.parent
    lines = _row_lines(source)
    digests: dict[str, str] = {}
    problems: list[str] = []
    for line, row in zip(lines, rows, strict=True):
        for field, path in audio_refs(row):
            if path in digests:
                continue
            problem, sha = _problem(source_dir, path)
            if problem:
                problems.append(f"{source}:{line}: field '{field}': audio file {path!r} {problem}")
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
