"""Parsing YAML and JSON documents a user hands us (config files, `--set` values), with limits.

Contract: `parse_document` returns plain data (dicts, lists, scalars) or raises DocumentError, whose message
is one line naming the source, the line where it can, and what is allowed. Refused: documents over
MAX_BYTES, bytes that are not UTF-8, nesting deeper than MAX_DEPTH, duplicate mapping keys (YAML and JSON
would otherwise silently keep the last), recursive YAML aliases, and aliases that expand to more than
MAX_NODES nodes (the "billion laughs" bomb). `parse_yaml_lines` / `parse_json_lines` also return the line of
every key and list item, so that a problem found later (validation) can name its line. YAML numbers follow
YAML 1.2, so `1e-4` is a float as in JSON (PyYAML's YAML 1.1 resolver reads it as a string).

PyYAML has no such limits of its own, hence this module; the pure-Python SafeLoader is used because the
limits hook into its composer (config files are small, speed does not matter here).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import re
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000


class DocumentError(ValueError):
    pass


class _LimitedLoader(yaml.SafeLoader):
    """SafeLoader with a depth limit, duplicate keys refused and alias expansion bounded."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nesting deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def compose_document(self) -> Node:
        node = super().compose_document()
        _check_expansion(node)
        return node  # type: ignore[no-any-return]

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if isinstance(key, (dict, list)):
                raise ConstructorError(None, None, "a mapping key must be a scalar", key_node.start_mark)
            if key in seen:
                raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)  # type: ignore[no-any-return]


_LimitedLoader.add_implicit_resolver(  # type: ignore[no-untyped-call]
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: Node) -> None:
    """Refuse a node graph with a cycle (a recursive alias) or that expands to more than MAX_NODES nodes.
    Iterative depth-first walk; each shared (aliased) node is sized once."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[key] > MAX_NODES:
                raise ComposerError(None, None, f"aliases expand to more than {MAX_NODES} values",
                                    node.start_mark)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise ComposerError(None, None, "recursive alias (an anchor used inside itself)", node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


def decode(data: bytes, source: str, max_bytes: int | None = MAX_BYTES) -> str:
    """UTF-8 text of a document; DocumentError names the line of the first undecodable byte."""
    if max_bytes is not None and len(data) > max_bytes:
        raise DocumentError(f"{source}: {len(data)} bytes; documents of at most {max_bytes} bytes are allowed")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DocumentError(f"{source}:{line}: byte 0x{data[err.start]:02x} is not UTF-8; save the file as "
                            "UTF-8 text") from None


Lines = dict[tuple[str | int, ...], int]


def parse_yaml(text: str, source: str) -> Any:
    return parse_yaml_lines(text, source)[0]


def parse_yaml_lines(text: str, source: str) -> tuple[Any, Lines]:
    """The data and the 1-based line of every mapping key and list item, by path (`("training", "epochs")`)."""
    if len(text) > MAX_BYTES:
        raise DocumentError(f"{source}: {len(text)} characters; documents of at most {MAX_BYTES} are allowed")
    loader = _LimitedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        return loader.construct_document(node), _lines(node)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = " ".join(str(err.problem or err.context or "invalid YAML").split())
        raise DocumentError(f"{where}: not valid YAML: {problem}") from None
    except (yaml.YAMLError, RecursionError) as err:
        raise DocumentError(f"{source}: not valid YAML: {type(err).__name__}") from None
    finally:
        loader.dispose()


def _lines(root: Node) -> Lines:
    found: Lines = {}
    stack: list[tuple[tuple[str | int, ...], Node]] = [((), root)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, MappingNode):
            for key, value in node.value:
                sub = (*path, str(key.value))
                found.setdefault(sub, key.start_mark.line + 1)
                stack.append((sub, value))
        elif isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                found.setdefault((*path, index), item.start_mark.line + 1)
                stack.append(((*path, index), item))
    return found


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DocumentError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise DocumentError(f"{name} is not a JSON number; numbers must be finite")


def parse_json(text: str, source: str) -> Any:
    return parse_json_lines(text, source)[0]


def parse_json_lines(text: str, source: str) -> tuple[Any, Lines]:
    """As parse_yaml_lines, for JSON. A duplicate key or a NaN/Infinity names its line too."""
    if len(text) > MAX_BYTES:
        raise DocumentError(f"{source}: {len(text)} characters; documents of at most {MAX_BYTES} are allowed")
    try:
        data = json.loads(text, object_pairs_hook=no_duplicate_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise DocumentError(f"{source}:{err.lineno}: not valid JSON: {err.msg} (column {err.colno})") from None
    except DocumentError as err:
        line = _JsonLines(text).problem
        raise DocumentError(f"{source}{f':{line}' if line else ''}: not valid JSON: {err}") from None
    except RecursionError:
        raise DocumentError(f"{source}: not valid JSON: nested too deeply") from None
    return data, _JsonLines(text).lines


_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_CONSTANTS = ("NaN", "Infinity", "-Infinity")


class _JsonLines:
    """The 1-based line of every key and list item of a JSON text that `json.loads` has parsed (the json
    module reports no positions, hence this walk), and `problem`: the line of the first duplicate key or
    NaN/Infinity constant. Its scalars are read by json's own scanner; past MAX_DEPTH it records nothing."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines: Lines = {}
        self.problem: int | None = None
        self._breaks = [i for i, ch in enumerate(text) if ch == "\n"]
        self._scalar = json.JSONDecoder(parse_constant=str).raw_decode
        with contextlib.suppress(ValueError, IndexError, RecursionError):  # not for text json.loads accepted
            self._value(0, ())

    def _line(self, pos: int) -> int:
        return bisect.bisect_left(self._breaks, pos) + 1

    def _skip(self, pos: int) -> int:
        return _JSON_SPACE.match(self.text, pos).end()  # type: ignore[union-attr]

    def _value(self, pos: int, path: tuple[str | int, ...]) -> int:
        pos = self._skip(pos)
        opener = self.text[pos]
        if opener not in "{[" or len(path) > MAX_DEPTH:
            value, end = self._scalar(self.text, pos)
            if value in _JSON_CONSTANTS and self.text[pos] != '"' and self.problem is None:
                self.problem = self._line(pos)
            return end
        closer, seen, index = ("}" if opener == "{" else "]"), set(), 0
        pos = self._skip(pos + 1)
        while self.text[pos] != closer:
            if opener == "{":
                key, end = json.decoder.scanstring(self.text, pos + 1)
                if key in seen and self.problem is None:
                    self.problem = self._line(pos)
                seen.add(key)
                self.lines.setdefault((*path, key), self._line(pos))
                pos = self._value(self._skip(end) + 1, (*path, key))  # past the ':'
            else:
                self.lines.setdefault((*path, index), self._line(self._skip(pos)))
                pos = self._value(pos, (*path, index))
                index += 1
            pos = self._skip(pos)
            if self.text[pos] == ",":
                pos = self._skip(pos + 1)
        return pos + 1


def parse_document(data: bytes, source: str, yaml_syntax: bool) -> Any:
    """Bytes of a YAML (or, with `yaml_syntax` False, JSON) document as plain data."""
    text = decode(data, source)
    return parse_yaml(text, source) if yaml_syntax else parse_json(text, source)


def is_yaml_name(name: str) -> bool:
    return name.lower().endswith((".yaml", ".yml"))
