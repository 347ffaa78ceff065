"""The benchmark's data: the synthetic mood/subject rule of `tunewright.data.synthetic`, with completions
of three lines so that prompt + completion is ~128 tokens (the byte tokenizer of the tiny presets).

Training and held-out rows have disjoint subjects, so held-out preference accuracy measures the rule.
Both tools get the same rows; each tokenizes them its own way.
"""

from __future__ import annotations

from tunewright.data.rows import PreferenceRow, RatedRow
from tunewright.data.synthetic import SUBJECTS, preference_rows

LINES = 3  # lines per completion: ~30 + 3 x 31 bytes
HELD_OUT_SUBJECTS = frozenset(SUBJECTS[-6:])


def _subject(prompt: str) -> str:
    return prompt.rsplit(" ", 1)[-1].rstrip(":")


def preference_pairs(per_prompt: int, seed: int = 0) -> list[PreferenceRow]:
    """`per_prompt` pairs for each of the 48 (mood, subject) prompts; chosen/rejected are LINES lines long."""
    rows = preference_rows(prompts=48, per_prompt=per_prompt * LINES, seed=seed)
    return [
        PreferenceRow(prompt=group[0].prompt, chosen="".join(r.chosen for r in group),
                      rejected="".join(r.rejected for r in group))
        for group in (rows[i:i + LINES] for i in range(0, len(rows), LINES))
    ]


def split(rows: list[PreferenceRow]) -> tuple[list[PreferenceRow], list[PreferenceRow]]:
    """(training rows, held-out rows): held-out prompts are about subjects never trained on."""
    train = [r for r in rows if _subject(r.prompt) not in HELD_OUT_SUBJECTS]
    return train, [r for r in rows if _subject(r.prompt) in HELD_OUT_SUBJECTS]


def rated(rows: list[PreferenceRow]) -> list[RatedRow]:
    """Rated rows for SFT: each chosen sample rated 5, each rejected one rated 1."""
    return [RatedRow(prompt=r.prompt, completion=text, rating=rating)
            for r in rows for text, rating in ((r.chosen, 5.0), (r.rejected, 1.0))]
