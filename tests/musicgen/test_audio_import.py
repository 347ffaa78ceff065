"""Importing audio datasets: files are validated (exist, decode), copied and folded into the digest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

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


@pytest.mark.parametrize(("setup", "reference", "message"), [
    (lambda src: None, "clips/missing.wav", r"row 2, field 'completion': audio file 'clips/missing.wav' not found in"),
    (lambda src: (src / "clips" / "bad.wav").write_bytes(b"RIFF not really a wave file"), "clips/bad.wav",
     r"row 2, field 'completion': audio file 'clips/bad.wav' cannot be decoded as audio \(Format not recognised; "
     r"supported: wav, flac"),
    (lambda src: None, "../outside.wav", r"row 2, field 'completion': audio file '../outside.wav' must be a path "
                                         r"relative to the dataset file"),
])
def test_a_bad_audio_reference_names_row_field_and_file_and_stores_nothing(
        root: Storage, tmp_path: Path, setup, reference: str, message: str) -> None:
    src = tmp_path / "src"
    _tone(src / "clips" / "good.wav")
    setup(src)
    rows = [{"prompt": "a high tone", "completion": "clips/good.wav", "rating": 5},
            {"prompt": "a low hum", "completion": reference, "rating": 1}]
    store = DatasetStore(root)
    with pytest.raises(DatasetError, match=message):
        store.import_file("broken", _jsonl(src / "rated.jsonl", rows), "rated", modality="audio")
    assert store.list() == []
    assert not store.datasets.exists("broken/clips/good.wav")


def test_every_bad_file_is_counted_in_one_error(root: Storage, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rows = [{"prompt": f"prompt {i}", "completions": [f"x{i}.wav", f"y{i}.wav"]} for i in range(4)]
    with pytest.raises(DatasetError, match=r"row 1, field 'completions\[0\]'.*\(and 3 more\)$"):
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
