"""Objectives by config `method`."""

from __future__ import annotations

from tunewright.training.objectives.base import DataError, Objective
from tunewright.training.objectives.dpo import DPOObjective
from tunewright.training.objectives.ranking import RankingObjective
from tunewright.training.objectives.sft import SFTObjective


def objective_for(method: str) -> Objective:
    if method == "sft":
        return SFTObjective()
    if method == "dpo":
        return DPOObjective()
    if method == "ranking":
        return RankingObjective()
    raise DataError(f"method {method!r} is not available in this build")


__all__ = ["DataError", "Objective", "objective_for"]
