r"""YAML input and output for repo files.

Reading uses PyYAML's libyaml parser (`CParser`), not ruamel. Measured on a 2-core host
(`python -m bench`): 16,384 tenant files take ~2 s with libyaml and ~28 s
with ruamel's round-trip loader, and `tunnelctl validate` must finish a 16k-tenant repo in
seconds. Positions for error messages come from the same parse: libyaml's nodes carry 0-based
line/column marks (columns in characters), so an error points at exactly the node the value
came from. We keep the node tree only for files that have a problem; for a file that is fine
the tree is dropped and rebuilt on demand (`compose`) when another file conflicts with it.

Line breaks are "\n" or "\r\n" only. YAML 1.1 (libyaml) also ends a line at a lone "\r" and
at U+0085, U+2028 and U+2029, which most editors and `git diff` show inside one line: such a file
would be read differently from how it looks (a "comment" holding one hides a key from review),
and every line number after it would name another line than the editor's. `parse` refuses them
at the line and column an editor shows (`_check_line_breaks`); with them gone, libyaml's marks
count exactly the editor's lines.

Two guards make the fast parser safe on hostile input:
- libyaml's composer recurses in C without a depth limit (`'[' * 100000` segfaults the process),
  so nesting depth is bounded before composing (`_check_depth`);
- aliases are refused (a "billion laughs" document is tiny to parse but explodes when walked).

The resolver follows YAML 1.2 (like ruamel, which writes these files): `on`, `no`, `yes` are
strings, `010` is ten, `1:30` is a string. PyYAML's default YAML 1.1 rules would read a file
written by ruamel differently.

Writing (`tunnelctl new`) uses ruamel, the same YAML 1.2 dialect, with the models' key order.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.cyaml import CParser
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import BaseResolver

MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 64
TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels; repo files are flat"
# libyaml >= 0.2.6 caps nesting itself (at 1,000) and may stop in its scanner before our own
# walk sees the 65th level: the same cause, so the same message, at the place it stopped.
_LIBYAML_TOO_DEEP = "maximum nesting depth"
Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class YamlProblem:
    line: int  # 1-based
    col: int  # 1-based
    message: str


@dataclass(frozen=True)
class ParsedYaml:
    value: Any
    node: Node | None


class _Resolver12(BaseResolver):  # type: ignore[misc]
    """YAML 1.2 core-schema implicit types (the same regexes ruamel uses for 1.2)."""


for _tag, _regexp, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("float", r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""", "-+0123456789."),
    ("int", r"""^(?:[-+]?0b[0-1_]+
        |[-+]?0o?[0-7_]+
        |[-+]?[0-9_]+
        |[-+]?0x[0-9a-fA-F_]+)$""", "-+0123456789"),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("timestamp", r"""^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]
        |[0-9][0-9][0-9][0-9] -[0-9][0-9]? -[0-9][0-9]?
        (?:[Tt]|[ \t]+)[0-9][0-9]?
        :[0-9][0-9] :[0-9][0-9] (?:\.[0-9]*)?
        (?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$""", "0123456789"),
):
    _Resolver12.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_regexp, re.VERBOSE),
                                      list(_first))


_CORE = "tag:yaml.org,2002:"


class _Scalars(SafeConstructor):  # type: ignore[misc]
    """PyYAML's scalar constructors, with YAML 1.2 integers."""

    def construct_yaml_int(self, node: ScalarNode) -> int:
        # YAML 1.2: '010' is decimal ten, octal needs '0o'.
        text = str(self.construct_scalar(node)).replace("_", "")
        sign = -1 if text[0] == "-" else 1
        digits = text.lstrip("+-")
        for prefix, base in (("0b", 2), ("0x", 16), ("0o", 8)):
            if digits.startswith(prefix):
                return sign * int(digits[2:], base)
        return sign * int(digits)


_SCALARS = _Scalars()
_SCALAR_BUILDERS: dict[str, Callable[[ScalarNode], Any]] = {
    _CORE + "int": _SCALARS.construct_yaml_int,
    _CORE + "float": _SCALARS.construct_yaml_float,
    _CORE + "bool": _SCALARS.construct_yaml_bool,
    _CORE + "null": _SCALARS.construct_yaml_null,
    _CORE + "timestamp": _SCALARS.construct_yaml_timestamp,
}


class _Builder:
    """Node tree -> plain values, instead of PyYAML's generic constructor: about three times
    faster on these small files (construction cost more than libyaml's parse), and strict:
    aliases, duplicate keys and non-core tags (!!python/..., !custom) are errors."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def build(self, node: Node) -> Any:
        if id(node) in self.seen:  # PyYAML shares the node of an anchor with its aliases
            raise ConstructorError(None, None, "YAML anchors and aliases (&name, *name) are not "
                                   "allowed in repo files; write the value out", node.start_mark)
        self.seen.add(id(node))
        kind = type(node)
        if kind is ScalarNode:
            if node.tag == _CORE + "str":
                return node.value
            builder = _SCALAR_BUILDERS.get(node.tag)
            if builder is not None:
                try:
                    return builder(node)
                except (ValueError, OverflowError, TypeError, KeyError) as exc:
                    # e.g. a timestamp with month 13 or an integer with 10,000 digits
                    raise ConstructorError(None, None, f"cannot read this value: {exc}",
                                           node.start_mark) from None
        elif kind is SequenceNode and node.tag == _CORE + "seq":
            return [self.build(item) for item in node.value]
        elif kind is MappingNode and node.tag == _CORE + "map":
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.build(key_node)
                if isinstance(key, (list, dict)):
                    raise ConstructorError(None, None, "a key must be plain text, not a list or "
                                           "mapping", key_node.start_mark)
                if key in out:
                    raise ConstructorError(None, None, f"duplicate key {key!r}: YAML keeps only "
                                           "the last one; remove one of them", key_node.start_mark)
                out[key] = self.build(value_node)
            return out
        raise ConstructorError(None, None, f"the tag {node.tag!r} is not allowed in repo files; "
                               "remove it", node.start_mark)


class _FastLoader(CParser, _Resolver12):  # type: ignore[misc]
    def __init__(self, stream: bytes) -> None:
        CParser.__init__(self, stream)
        _Resolver12.__init__(self)


def _position(data: bytes, offset: int) -> tuple[int, int]:
    """1-based line and character column of a byte offset."""
    offset = max(0, min(offset, len(data)))
    start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, len(data[start:offset].decode("utf-8", "replace")) + 1


def _mark_position(data: bytes, mark: Mark) -> tuple[int, int]:
    r"""1-based line and column of a libyaml mark in a file of "\n" (or "\r\n") lines."""
    if mark.line > data.count(b"\n"):
        # libyaml ends the last line for a file without a final "\n" and reports the end of the
        # stream on the line after it, which no editor has: point after the last character.
        return _position(data, len(data))
    return mark.line + 1, mark.column + 1


# Valid UTF-8 is checked first, so these byte patterns can only be the characters themselves.
_HIDDEN_BREAK = re.compile(rb"\r(?!\n)|\xc2\x85|\xe2\x80[\xa8\xa9]")
_HIDDEN_BREAK_NAMES = {
    b"\r": "a carriage return (\\r) without \\n after it",
    "\x85".encode(): "the character U+0085 (NEXT LINE)",
    "\u2028".encode(): "the character U+2028 (LINE SEPARATOR)",
    "\u2029".encode(): "the character U+2029 (PARAGRAPH SEPARATOR)",
}
_HIDDEN_BREAK_FIX = {
    b"\r": "save the file with \\n (or \\r\\n) line endings",
}


def _check_line_breaks(data: bytes) -> YamlProblem | None:
    """The first line break YAML sees but an editor does not (see the module's docstring)."""
    # Cheap tests first (16k files per load): most files are ASCII without a "\r".
    if b"\r" not in data and data.isascii():
        return None
    found = _HIDDEN_BREAK.search(data)
    if found is None:
        return None
    char = found.group()
    line, col = _position(data, found.start())
    fix = _HIDDEN_BREAK_FIX.get(char, "remove it, or use a plain line break")
    return YamlProblem(line, col, f"{_HIDDEN_BREAK_NAMES[char]} is a line break to YAML but not "
                       "to most editors or git diff, so this file would not be read the way it "
                       f"looks; {fix}")


def _yaml_error(data: bytes, exc: yaml.YAMLError) -> YamlProblem:
    if isinstance(exc, yaml.reader.ReaderError):
        line, col = _position(data, exc.position)
        return YamlProblem(line, col, f"character {exc.character!r} is not allowed in YAML "
                           "(control characters and binary data); remove it")
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(s for s in (exc.context, exc.problem) if s)
        message = TOO_DEEP if _LIBYAML_TOO_DEEP in what else f"invalid YAML: {what}"
        if mark is not None:
            return YamlProblem(*_mark_position(data, mark), message)
        return YamlProblem(1, 1, message)
    return YamlProblem(1, 1, f"invalid YAML: {exc}")


def _check_depth(data: bytes) -> YamlProblem | None:
    # Every nesting level needs one of these indicators, so their count bounds the depth; only
    # a file with many of them pays for the exact check (an event walk, which is iterative).
    if sum(data.count(c) for c in (b"[", b"{", b"-", b"?", b":")) <= MAX_DEPTH:
        return None
    depth = 0
    for event in yaml.parse(data, Loader=_FastLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                return YamlProblem(*_mark_position(data, event.start_mark), TOO_DEEP)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def parse(data: bytes) -> ParsedYaml | YamlProblem:
    """Parse one repo file. Never raises: any failure is a located YamlProblem."""
    if len(data) > MAX_FILE_BYTES:
        return YamlProblem(1, 1, f"file is larger than the limit of {MAX_FILE_BYTES} bytes; "
                           "repo files are a few hundred bytes, is this the right file?")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _position(data, exc.start)
        return YamlProblem(line, col, "file is not UTF-8 text (binary data or another "
                           "encoding); save it as UTF-8")
    problem = _check_line_breaks(data)
    if problem is not None:
        return problem
    try:
        problem = _check_depth(data)
        if problem is not None:
            return problem
        loader = _FastLoader(data)
        try:
            node = loader.get_single_node()
            value = _Builder().build(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        return _yaml_error(data, exc)
    except (RecursionError, MemoryError, ValueError, TypeError) as exc:
        return YamlProblem(1, 1, f"cannot read this file as YAML: {type(exc).__name__}")
    return ParsedYaml(value, node)


def compose(data: bytes) -> Node | None:
    """Node tree of a file that `parse` accepted earlier (for positions only)."""
    try:
        return yaml.compose(data, Loader=_FastLoader)
    except yaml.YAMLError:
        return None


def _child(node: Node, step: str | int) -> tuple[Node, Node] | None:
    """(key node or item node, value node) for one step of a location."""
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value == str(step):
                return key_node, value_node
    elif isinstance(node, SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
        item = node.value[step]
        return item, item
    return None


def position(node: Node | None, loc: Loc, *, key: bool = False) -> tuple[int, int]:
    """1-based (line, col) of `loc` in a node tree: the value's position, or the key's when
    `key` is true. Steps that do not exist (a missing key) stop at the enclosing node."""
    if node is None:
        return 1, 1
    mark = node.start_mark
    current = node
    for i, step in enumerate(loc):
        found = _child(current, step)
        if found is None:
            break
        key_node, current = found
        mark = key_node.start_mark if (key and i == len(loc) - 1) else current.start_mark
    return mark.line + 1, mark.column + 1


# --- writing (ruamel round-trip: comments, order and quoting survive) ---------------------


def _ruamel() -> Any:
    from ruamel.yaml import YAML

    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    rt.width = 4096  # never fold long notes
    rt.indent(mapping=2, sequence=4, offset=2)
    return rt


def to_plain(value: Any) -> Any:
    """Model values -> what YAML should show (CIDRs as text, enums as their value)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (IPv4Network, IPv4Interface)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def dump_document(values: Mapping[str, Any], header: str = "") -> str:
    """A new YAML document in the given key order, lists in block style."""
    import io

    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    doc = CommentedMap()
    for k, v in values.items():
        plain = to_plain(v)
        if isinstance(plain, list):
            seq = CommentedSeq(plain)
            if not plain or k == "services":
                seq.fa.set_flow_style()
            plain = seq
        doc[k] = plain
    out = io.StringIO()
    _ruamel().dump(doc, out)
    return header + out.getvalue()


def write_atomic(path: Path, text: str) -> None:
    """Replace a file in one rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
