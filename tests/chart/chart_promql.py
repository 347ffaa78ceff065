"""What a PromQL expression refers to: metric names and label names (enough of PromQL for our assets).

No registry package parses PromQL in Python, so this strips strings, durations and the label lists of
matchers and grouping clauses, then reads what is left: identifiers followed by "(" are functions or
aggregations, keywords are keywords, everything else is a metric name.
"""

from __future__ import annotations

import re

KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "inf", "nan", "atan2"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\]]*\]")
_OFFSET = re.compile(r"\boffset\s+-?\d+[smhdwy]")
_IDENT = re.compile(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\s*(\()?")


def references(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) used by `expr`."""
    labels: set[str] = set()
    text = _STRING.sub('""', expr)
    for match in _GROUPING.finditer(text):
        labels |= {name.strip() for name in match.group(2).split(",") if name.strip()}
    text = _GROUPING.sub(" ", text)
    for match in _MATCHERS.finditer(text):
        labels |= set(_MATCHER_LABEL.findall(match.group(1)))
    text = _OFFSET.sub(" ", _RANGE.sub(" ", _MATCHERS.sub(" ", text)))
    metrics = {m.group(1) for m in _IDENT.finditer(text)
               if not m.group(2) and m.group(1).lower() not in KEYWORDS}
    return metrics, labels


LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_]\w*)\s*\}\}")
TEMPLATE_LABEL = re.compile(r"\$labels\.([a-zA-Z_]\w*)")
