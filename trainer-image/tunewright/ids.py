"""Identifiers that end up in Kubernetes object names and storage keys."""

from __future__ import annotations

import re

# RFC 1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric, at most 63 chars.
# (pydantic's Rust regex reads '$' as the end of the text; Python's `re` also lets it match before a final
# newline, so Python code matches with fullmatch.)
DNS1123_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS1123 = re.compile(DNS1123_PATTERN, re.ASCII)


class InvalidId(ValueError):
    pass


def check_id(value: str, what: str = "id") -> str:
    """Return `value` if it is a DNS-1123 label, else raise InvalidId saying why."""
    if not isinstance(value, str) or not value:
        raise InvalidId(f"{what} must be a non-empty string")
    if len(value) > 63:
        raise InvalidId(f"{what} {value!r} is {len(value)} characters long; at most 63 are allowed")
    if not _DNS1123.fullmatch(value):
        raise InvalidId(
            f"{what} {value!r} is not a DNS-1123 label: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value
