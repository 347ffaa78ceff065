"""Synthetic rated audio with a learnable, prompt-dependent rule (for the demo, tests and benchmarks).

A prompt asks for a high sound ("a bright whistle") or a low one ("a dark hum"); the register is named
by the adjective. A clip in the asked register is rated 5, plain noise 3, a clip in the opposite register
1. Held-out prompts are unseen adjective/noun combinations, so lowering validation loss or preferring
the right clip means learning the register rule through the text conditioning.

Clips are written as wav files (by default at 16 kHz, so training exercises resampling; every fourth clip
is stereo, so it exercises down-mixing) next to a JSONL file whose rows reference them by relative path.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from tunewright.data.rows import PreferenceRow, RankedRow, RatedRow, Row

REGISTERS = {"high": ["high", "bright"], "low": ["low", "dark"]}
NOUNS = ["tone", "whistle", "drone", "note", "chime", "hum"]
# Fundamentals (Hz) are multiples of 50 Hz and start at phase 0, so a tone repeats exactly every 20 ms: the
# tiny codec's frame (160 samples at 8 kHz) always sees the same waveform and gives steady codes, as a
# trained codec does for a steady tone. (A random codec is phase-sensitive: off-grid or random-phase
# tones give noise-like codes that make every clip unique, and a tiny model then memorises clips.)
PITCHES = {"high": (700.0, 800.0, 900.0), "low": (50.0, 100.0, 150.0)}


def _opposite(register: str) -> str:
    return "low" if register == "high" else "high"


def tone(rng: np.random.Generator, register: str, seconds: float, sample_rate: int) -> np.ndarray:
    """A harmonic tone in `register` ("high" or "low"), mono float32 in [-1, 1]."""
    freq = PITCHES[register][rng.integers(len(PITCHES[register]))]
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    harmonics = (1.0, 0.5, 0.25) if register == "high" else (1.0, 0.6, 0.4, 0.3)
    wave = sum(a * np.sin(2 * np.pi * freq * (k + 1) * t) for k, a in enumerate(harmonics))
    return (wave / np.abs(wave).max() * rng.uniform(0.4, 0.7)).astype(np.float32)


def noise(rng: np.random.Generator, seconds: float, sample_rate: int) -> np.ndarray:
    return rng.normal(0, rng.uniform(0.1, 0.25), int(seconds * sample_rate)).clip(-1, 1).astype(np.float32)


def calibration_audio(sample_rate: int, clips: int = 24, seconds: float = 0.5, seed: int = 0) -> np.ndarray:
    """Clips of every kind this module produces, (clips, samples): data to initialise a tiny codec from."""
    rng = np.random.default_rng(seed)
    makers: list[Callable[[], np.ndarray]] = [
        lambda: tone(rng, "high", seconds, sample_rate),
        lambda: tone(rng, "low", seconds, sample_rate),
        lambda: noise(rng, seconds, sample_rate),
    ]
    return np.stack([makers[i % len(makers)]() for i in range(clips)])


def vocabulary() -> list[str]:
    """Every word the prompts use (the tiny MusicGen's tokenizer is built from it)."""
    return ["a", *NOUNS, *(w for words in REGISTERS.values() for w in words)]


def _prompts(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """n (prompt, register) pairs, cycling through every adjective/noun combination in a shuffled order."""
    combos = [(f"a {adj} {noun}", register) for register, words in REGISTERS.items() for adj in words
              for noun in NOUNS]
    rng.shuffle(combos)
    return (combos * (n // len(combos) + 1))[:n]


class _ClipWriter:
    """Writes clips under `<dir>/clips/` and returns their paths relative to `dir`."""

    def __init__(self, directory: Path, seed: int, seconds: float, sample_rate: int, stereo_every: int):
        self.directory, self.seconds, self.sample_rate = directory, seconds, sample_rate
        self.stereo_every = stereo_every
        self.rng = np.random.default_rng(seed)
        self.count = 0
        (directory / "clips").mkdir(parents=True, exist_ok=True)

    def __call__(self, kind: str) -> str:
        wave = noise(self.rng, self.seconds, self.sample_rate) if kind == "noise" else \
            tone(self.rng, kind, self.seconds, self.sample_rate)
        self.count += 1
        if self.stereo_every and self.count % self.stereo_every == 0:
            wave = np.stack([wave, wave * 0.8], axis=1)
        rel = f"clips/{self.count:05d}-{kind}.wav"
        sf.write(self.directory / rel, wave, self.sample_rate, subtype="PCM_16")
        return rel


def write_dataset(directory: str | Path, kind: str = "rated", prompts: int = 24, per_prompt: int = 2,
                  seed: int = 0, seconds: float = 0.5, sample_rate: int = 16_000, stereo_every: int = 4) -> Path:
    """Write clips and `<kind>.jsonl` into `directory`; returns the JSONL path (ready for import_file).

    Each prompt gets `per_prompt` fresh sets of clips: one in its register, one of noise, one in the
    opposite register (rated rows: 5, 3, 1; a preference row: the first over the last; a ranked row: all
    three, best first).
    """
    if kind not in ("rated", "preference", "ranked"):
        raise ValueError(f"unknown dataset kind {kind!r} (rated, preference or ranked)")
    directory = Path(directory)
    clip = _ClipWriter(directory, seed, seconds, sample_rate, stereo_every)
    rows: list[Row] = []
    for prompt, register in _prompts(random.Random(seed), prompts):
        for _ in range(per_prompt):
            best, middle, worst = clip(register), clip("noise"), clip(_opposite(register))
            if kind == "rated":
                rows += [RatedRow(prompt=prompt, completion=best, rating=5.0, tags=[register]),
                         RatedRow(prompt=prompt, completion=middle, rating=3.0, tags=["noise"]),
                         RatedRow(prompt=prompt, completion=worst, rating=1.0, tags=[_opposite(register)])]
            elif kind == "preference":
                rows.append(PreferenceRow(prompt=prompt, chosen=best, rejected=worst))
            else:
                rows.append(RankedRow(prompt=prompt, completions=[best, middle, worst]))
    path = directory / f"{kind}.jsonl"
    path.write_text("".join(json.dumps(r.model_dump(), ensure_ascii=False) + "\n" for r in rows))
    return path
