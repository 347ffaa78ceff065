"""Synthetic rated text data with a learnable, prompt-dependent rule (for the demo, tests and benchmarks).

A prompt asks for a song with a mood about a subject. A rule-following completion uses words of the
prompt's mood and mentions the subject (rated 5); a half-right one mixes moods (rated 3); a rule-breaking
one uses the opposite mood's words (rated 1). Held-out prompts have unseen subjects, so learning the
rule (not memorising) is what lowers validation loss.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tunewright.data.rows import PreferenceRow, RankedRow, RatedRow

MOODS = {
    "happy": ["sun", "bright", "dance", "smile", "gold", "light", "joy", "warm"],
    "sad": ["rain", "grey", "tears", "alone", "cold", "night", "lost", "slow"],
}
SUBJECTS = ["sea", "city", "road", "forest", "river", "train", "garden", "winter", "summer", "home",
            "moon", "friend", "mountain", "desert", "island", "harbor", "bridge", "window", "letter",
            "street", "meadow", "storm", "candle", "mirror"]


def _opposite(mood: str) -> str:
    return "sad" if mood == "happy" else "happy"


def _line(rng: random.Random, words: list[str], subject: str, n: int = 4) -> str:
    picked = rng.sample(words, n)
    picked.insert(rng.randrange(n + 1), subject)
    return " ".join(picked) + "."


def _graded(rng: random.Random, mood: str, subject: str) -> list[tuple[str, float]]:
    """Three completions for one prompt, best first, with their ratings."""
    good = _line(rng, MOODS[mood], subject)
    mixed = _line(rng, MOODS[mood][:4] + MOODS[_opposite(mood)][:4], subject)
    bad = _line(rng, MOODS[_opposite(mood)], subject)
    return [(good, 5.0), (mixed, 3.0), (bad, 1.0)]


def _prompts(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    pairs = [(m, s) for s in SUBJECTS for m in MOODS]
    rng.shuffle(pairs)
    return [(f"a {m} song about the {s}:", m, s) for m, s in (pairs * (n // len(pairs) + 1))[:n]]


def rated_rows(prompts: int = 48, per_prompt: int = 2, seed: int = 0) -> list[RatedRow]:
    rng = random.Random(seed)
    rows = []
    for prompt, mood, subject in _prompts(rng, prompts):
        for _ in range(per_prompt):
            for text, rating in _graded(rng, mood, subject):
                rows.append(RatedRow(prompt=prompt, completion=" " + text, rating=rating, tags=[mood]))
    return rows


def preference_rows(prompts: int = 48, per_prompt: int = 2, seed: int = 0) -> list[PreferenceRow]:
    rng = random.Random(seed)
    rows = []
    for prompt, mood, subject in _prompts(rng, prompts):
        for _ in range(per_prompt):
            (good, _), _, (bad, _) = _graded(rng, mood, subject)
            rows.append(PreferenceRow(prompt=prompt, chosen=" " + good, rejected=" " + bad))
    return rows


def ranked_rows(prompts: int = 48, per_prompt: int = 2, seed: int = 0) -> list[RankedRow]:
    rng = random.Random(seed)
    return [
        RankedRow(prompt=prompt, completions=[" " + t for t, _ in _graded(rng, mood, subject)])
        for prompt, mood, subject in _prompts(rng, prompts)
        for _ in range(per_prompt)
    ]


def write_jsonl(rows: list, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r.model_dump(), ensure_ascii=False) + "\n" for r in rows))
    return path
