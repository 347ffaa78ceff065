"""Deterministic train/validation split by prompt: no prompt lands in both splits."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

from tunewright.data.rows import Row

R = TypeVar("R", bound=Row)


def prompt_bucket(prompt: str) -> float:
    """A stable number in [0, 1) for a prompt (independent of Python's hash seed)."""
    return int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big") / 2**64


def split_by_prompt(rows: Sequence[R], validation_fraction: float) -> tuple[list[R], list[R]]:
    """Rows whose prompt hashes below the fraction go to validation.

    With a non-zero fraction and at least two distinct prompts, validation gets at least the prompt
    with the smallest hash, so tiny datasets still have something to evaluate on.
    """
    if validation_fraction <= 0:
        return list(rows), []
    prompts = sorted({r.prompt for r in rows}, key=prompt_bucket)
    held = {p for p in prompts if prompt_bucket(p) < validation_fraction}
    if not held and len(prompts) > 1:
        held = {prompts[0]}
    if len(held) == len(prompts):
        held.discard(prompts[-1])
    return [r for r in rows if r.prompt not in held], [r for r in rows if r.prompt in held]
