"""Row formats of the three dataset kinds (the common conventions; preference rows use TRL's names)."""

from __future__ import annotations

import unicodedata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Kind = Literal["rated", "preference", "ranked"]
Modality = Literal["text", "audio"]


def is_blank(text: str) -> bool:
    """True when nothing in `text` is visible: whitespace, control and format characters (zero-width
    spaces and joiners, BOMs, direction marks) only."""
    return all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp") for ch in text)


class Row(BaseModel):
    """No type coercion (`true` is not a rating, `"5"` is not 5) and finite numbers only."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    prompt: str = Field(min_length=1)

    @field_validator("*", mode="after")
    @classmethod
    def _not_blank(cls, value: object) -> object:
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(t, str) and is_blank(t) for t in texts):
            raise ValueError("must not be empty, whitespace or invisible characters only")
        return value


class RatedRow(Row):
    """`{prompt, completion, rating, tags?}`: one sample and a human rating."""

    completion: str = Field(min_length=1)
    rating: float
    tags: list[str] = Field(default_factory=list)


class PreferenceRow(Row):
    """`{prompt, chosen, rejected}`: a pairwise judgement."""

    chosen: str = Field(min_length=1)
    rejected: str = Field(min_length=1)

    @model_validator(mode="after")
    def _differ(self) -> PreferenceRow:
        if self.chosen == self.rejected:
            raise ValueError("chosen and rejected are identical")
        return self


class RankedRow(Row):
    """`{prompt, completions: [best, ..., worst]}`: a ranking of at least two samples."""

    completions: list[str] = Field(min_length=2)

    @field_validator("completions")
    @classmethod
    def _distinct_nonempty(cls, items: list[str]) -> list[str]:
        if len(set(items)) != len(items):
            raise ValueError("completions must be distinct")
        return items


ROW_MODELS: dict[str, type[Row]] = {"rated": RatedRow, "preference": PreferenceRow, "ranked": RankedRow}


def sample_fields(row: Row) -> list[str]:
    """The sample payloads of a row (texts, or audio paths for the audio modality)."""
    if isinstance(row, RatedRow):
        return [row.completion]
    if isinstance(row, PreferenceRow):
        return [row.chosen, row.rejected]
    assert isinstance(row, RankedRow)
    return list(row.completions)
