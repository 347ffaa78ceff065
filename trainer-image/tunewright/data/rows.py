"""Row formats of the three dataset kinds (the common conventions; preference rows use TRL's names)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Kind = Literal["rated", "preference", "ranked"]
Modality = Literal["text", "audio"]


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1)

    @field_validator("*", mode="after")
    @classmethod
    def _not_blank(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty or whitespace")
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
        if any(not c.strip() for c in items):
            raise ValueError("completions must not be empty")
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
