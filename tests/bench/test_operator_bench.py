"""bench/operator_scale.py's latency pairing (not its figures): jobs applied while a slot was free count for
apply → pod; each freed slot is filled by the next waiting job's pod, first freed first filled; slots freed
while the operator was down (its restart, measured as resync) are filled but not counted."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.operator_scale import MAX_CONCURRENT, Timeline, latencies


def timeline(down: tuple[float, float] | None = None) -> Timeline:
    t = Timeline(down=down)
    t.created = {"free": 0.0, "wait-1": 1.0, "wait-2": 1.0}
    t.in_flight_at_create = {"free": 0, "wait-1": MAX_CONCURRENT, "wait-2": MAX_CONCURRENT}
    t.pod_added = {"free": 0.4, "wait-1": 10.5, "wait-2": 30.0}
    t.freed = [10.0, 20.0]  # two pods succeed; the waiting jobs' pods follow at 10.5 and 30
    return t


def test_freed_slots_are_filled_first_in_first_out() -> None:
    apply, following = latencies(timeline())
    assert apply == [0.4]
    assert following == [0.5, 10.0]


def test_slots_freed_while_the_operator_was_down_are_not_counted() -> None:
    assert latencies(timeline(down=(15.0, 29.0)))[1] == [0.5]
