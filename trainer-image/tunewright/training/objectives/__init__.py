"""Objectives by config `method`."""

from __future__ import annotations

from tunewright.training.objectives.base import DataError, Objective
from tunewright.training.objectives.sft import SFTObjective


def objective_for(method: str) -> Objective:
    if method == "sft":
        return SFTObjective()
    raise DataError(f"method {method!r} is not available in this build")


__all__ = ["DataError", "Objective", "objective_for"]
