"""Mono 16-bit PCM WAV files with the standard library's `wave` (every browser plays them), and back."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """`samples` in [-1, 1] (louder ones are clipped) as a WAV file's bytes."""
    pcm = (np.clip(np.asarray(samples, dtype=np.float64), -1.0, 1.0) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return buf.getvalue()


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wav_bytes(samples, rate))


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """(samples in [-1, 1], rate) of a file `wav_bytes` wrote."""
    with wave.open(io.BytesIO(data), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"expected 16-bit PCM WAV, got {8 * wav.getsampwidth()}-bit")
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        channels, rate = wav.getnchannels(), wav.getframerate()
    return frames.reshape(-1, channels)[:, 0].astype(np.float32) / 32767, rate
