"""promtool `input_series` from a recording of /metrics expositions (capture_metrics.py), one per minute.

Each tunewright_ sample becomes a series whose values are its value in each scrape, `_` where a scrape
lacks it: exactly what Prometheus would have stored from those scrapes (without the target labels).
"""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families


def _value(number: float) -> str:
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Inf" if number > 0 else "-Inf"
    return repr(float(number))


def _selector(name: str, labels: dict[str, str]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}" if inner else name


def input_series(texts: list[str]) -> list[dict[str, str]]:
    """[{"series": selector, "values": "v0 v1 ..."}] for every tunewright_ sample in the scrapes `texts`."""
    values: dict[str, list[str]] = {}
    for minute, text in enumerate(texts):
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("tunewright_"):
                    row = values.setdefault(_selector(sample.name, sample.labels), ["_"] * len(texts))
                    row[minute] = _value(sample.value)
    return [{"series": series, "values": " ".join(row)} for series, row in sorted(values.items())]
