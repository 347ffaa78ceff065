"""Importing audio datasets: files are validated (exist, decode), copied and folded into the digest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tunewright.cli.main import main
from tunewright.data.audio_files import MANIFEST, conform, decode_audio, read_manifest
from tunewright.data.store import DatasetError, DatasetStore
from tunewright.data.synthetic_audio import write_dataset
from tunewright.storage import Storage, open_storage


@pytest.fixture
def root(tmp_path: Path) -> Storage:
    return open_storage(f"file://{tmp_path}/store")


def _tone(path: Path, freq: float = 800.0, rate: int = 16_000, channels: int = 1, fmt: str | None = None) -> str:
    t = np.arange(rate // 2) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.stack([wave] * channels, axis=1), rate, format=fmt)
    return path.name


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_import_copies_the_clips_and_their_content_is_in_the_digest(root: Storage, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name, fmt in (("a.wav", None), ("b.flac", None), ("c.ogg", "OGG")):
        _tone(src / "clips" / name, fmt=fmt)
    rows = [{"prompt": "a high tone", "chosen": "clips/a.wav", "rejected": "clips/b.flac"},
            {"prompt": "a low hum", "chosen": "clips/c.ogg", "rejected": "clips/a.wav"}]
    store = DatasetStore(root)
    meta = store.import_file("first", _jsonl(src / "pairs.jsonl", rows), "preference", modality="audio")
    ds = store.datasets.child("first")
    assert meta.modality == "audio" and meta.samples == 2
    assert sorted(read_manifest(ds)) == ["clips/a.wav", "clips/b.flac", "clips/c.ogg"]
    for name in read_manifest(ds):
        assert ds.read_bytes(name) == (src / name).read_bytes()

    same = store.import_file("same", src / "pairs.jsonl", "preference", modality="audio")
    assert same.digest == meta.digest
    _tone(src / "clips" / "b.flac", freq=200.0)  # same rows, different audio
    changed = store.import_file("changed", src / "pairs.jsonl", "preference", modality="audio")
    assert changed.digest != meta.digest
    assert ds.read_bytes("clips/b.flac") != (src / "clips/b.flac").read_bytes()  # stored data is untouched


def _no_sample_rate(path: Path) -> None:
    """A wav whose header's sample-rate field is 0."""
    _tone(path)
    data = bytearray(path.read_bytes())
    data[24:28] = (0).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def _zero_frames(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros((0, 1), dtype=np.float32), 16_000)


BAD_AUDIO = {  # id: (make the file under the source folder, the row's reference, what the line says)
    "missing": (lambda src: None, "clips/missing.wav", "is not found in "),
    "unreadable": (lambda src: (src / "clips" / "dir.wav").mkdir(), "clips/dir.wav", "cannot be read (Is a directory)"),
    "undecodable": (lambda src: (src / "clips" / "bad.wav").write_bytes(b"RIFF not really a wave file"),
                    "clips/bad.wav",
                    "cannot be decoded as audio (Format not recognised; supported: wav, flac, ogg, mp3)"),
    "empty file": (lambda src: (src / "clips" / "empty.wav").write_bytes(b""), "clips/empty.wav", "is empty (0 bytes)"),
    "zero-length clip": (lambda src: _zero_frames(src / "clips" / "silent.wav"), "clips/silent.wav",
                         "holds no audio frames (a zero-length clip)"),
    "sample rate missing": (lambda src: _no_sample_rate(src / "clips" / "norate.wav"), "clips/norate.wav",
                            "has no sample rate or no channel count in its header"),
    "wrong extension": (lambda src: _tone(src / "clips" / "tone.txt", fmt="WAV"), "clips/tone.txt",
                        "has extension '.txt'; allowed: .wav, .flac, .ogg, .oga, .opus, .mp3"),
    "no extension": (lambda src: _tone(src / "clips" / "tone", fmt="WAV"), "clips/tone", "has extension '(none)'"),
    "extension of another format": (lambda src: _tone(src / "clips" / "tone.mp3", fmt="WAV"), "clips/tone.mp3",
                                    "holds WAV audio but is named .mp3: rename it to match its format"),
    "parent folder": (lambda src: _tone(src.parent / "outside.wav"), "../outside.wav", "is outside the dataset"),
    "absolute path": (lambda src: _tone(src.parent / "abs.wav"), "ABS/abs.wav", "is outside the dataset"),
}


@pytest.mark.parametrize("case", BAD_AUDIO)
def test_bad_audio_is_refused_with_one_line_naming_file_line_field_and_clip(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    setup, reference, says = BAD_AUDIO[case]
    src = tmp_path / "src"
    _tone(src / "clips" / "good.wav")
    setup(src)
    reference = reference.replace("ABS", str(tmp_path))
    jsonl = src / "rated.jsonl"
    jsonl.write_text(json.dumps({"prompt": "a high tone", "completion": "clips/good.wav", "rating": 5}) + "\n\n"
                     + json.dumps({"prompt": "a low hum", "completion": reference, "rating": 1}) + "\n")
    storage = f"file://{tmp_path}/store"
    code = main(["--storage", storage, "dataset", "import", "broken", str(jsonl), "--kind", "rated",
                 "--modality", "audio"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {jsonl}:3: field 'completion': audio file {reference!r} {says}"), err
    store = DatasetStore(open_storage(storage))
    assert store.list() == [] and not store.datasets.exists("broken/clips/good.wav")  # nothing stored


def test_every_bad_file_is_counted_in_one_error(root: Storage, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rows = [{"prompt": f"prompt {i}", "completions": [f"x{i}.wav", f"y{i}.wav"]} for i in range(4)]
    with pytest.raises(DatasetError, match=r"r.jsonl:1: field 'completions\[0\]'.*\(and 3 more\)$"):
        DatasetStore(root).import_file("ranked", _jsonl(src / "r.jsonl", rows), "ranked", modality="audio")


def test_clips_are_mixed_and_resampled_to_the_models_format(tmp_path: Path) -> None:
    _tone(tmp_path / "stereo.wav", freq=800.0, rate=22_050, channels=2)
    wave, rate = decode_audio((tmp_path / "stereo.wav").read_bytes())
    assert wave.shape == (2, 11_025) and rate == 22_050
    mono = conform(wave, rate, 8_000, channels=1)
    assert mono.shape[0] == 1 and abs(mono.shape[1] - 4_000) <= 1
    spectrum = np.abs(np.fft.rfft(mono[0]))
    assert abs(np.argmax(spectrum) * 8_000 / mono.shape[1] - 800.0) < 5  # the pitch survives resampling
    assert conform(mono, 8_000, 8_000, channels=2).shape[0] == 2  # mono to a stereo model: both channels


def test_synthetic_audio_datasets_import(root: Storage, tmp_path: Path) -> None:
    store = DatasetStore(root)
    for kind in ("rated", "preference", "ranked"):
        path = write_dataset(tmp_path / kind, kind, prompts=4, per_prompt=1)
        meta = store.import_file(kind, path, kind, modality="audio")
        assert meta.samples == {"rated": 12, "preference": 4, "ranked": 4}[kind]
        assert store.datasets.exists(f"{kind}/{MANIFEST}")
