"""Single-file stage of Load: bytes of one repo file -> model + located issues.

Pure and path-free, so its result can be cached by content (git blob id): the same bytes
always give the same answer. Rules needing the path, the gateway or other files come later
(`reconciler.repo.crossfile`). Every failure becomes an Issue with a 1-based line and column; this
function never raises on any input.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.repo.model import Gateway, Service, Tunnel
from reconciler.repo.yamlio import Loc, ParsedYaml, YamlProblem, parse, position

MAX_ISSUES_PER_FILE = 20

# Shown when a required key is missing, so the fix is one copy-paste away.
EXAMPLES: dict[str, str] = {
    "org": "org: acme-voip  (the folder name)",
    "name": "name: hq  (the file name without .yaml)",
    "gateway": "gateway: cloud-1  (the name in gateway.yaml)",
    "public_key": "public_key: <output of 'wg pubkey' on the customer router>",
    "subnet": "subnet: 10.20.0.4/30  ('tunnelctl new' picks a free one)",
    "address": "address: 10.20.0.1/16",
    "pool": "pool: 10.20.0.0/16",
    "endpoint": "endpoint: 203.0.113.10:51821",
    "services": "services: {sip: {proto: udp, ports: '5060,5080'}}",
    "proto": "proto: udp",
    "ports": "ports: '5060,5080'",
}

# Hints by pydantic error type: what to write instead.
TYPE_HINTS: dict[str, str] = {
    "string_type": "expected text{got}; put it in quotes if it is meant as text",
    "int_type": "expected a whole number{got}",
    "int_parsing": "expected a whole number{got}",
    "int_from_float": "expected a whole number{got}",
    "bool_type": "expected true or false{got}",
    "tuple_type": "expected a list, e.g. [a, b] or one '- item' per line{got}",
    "list_type": "expected a list, e.g. [a, b] or one '- item' per line{got}",
    "dict_type": "expected a mapping of keys{got}",
    "model_type": "expected a mapping of keys{got}",
    "model_attributes_type": "expected a mapping of keys{got}",
    "date_type": "expected a date like 2026-01-31{got}",
    "date_parsing": "expected a date like 2026-01-31{got}",
    "date_from_datetime_parsing": "expected a date like 2026-01-31{got}",
    "date_from_datetime_inexact": "expected a date like 2026-01-31{got}",
    "invalid_key": "keys must be text",
}


# A rule about an absent key is best shown at the key that makes it necessary.
POINT_AT_INSTEAD: dict[str, str] = {"revoked_at": "status"}


@dataclass(frozen=True)
class Issue:
    line: int
    col: int
    message: str


@dataclass(frozen=True)
class FileCheck:
    model: Tunnel | Gateway | None  # None when the file has issues
    issues: tuple[Issue, ...]


def _kind_of(node: Node | None) -> str:
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, ScalarNode):
        return f"the text {node.value[:40]!r}"
    return "something else"


def _described_input(value: Any) -> str:
    if isinstance(value, bool):
        return f", got {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f", got the number {value}"
    if value is None:
        return ", got nothing (null)"
    if isinstance(value, list):
        return ", got a list"
    if isinstance(value, dict):
        return ", got a mapping"
    if isinstance(value, str):
        return f", got {value[:60]!r}"
    return f", got {type(value).__name__}"


def dotted(loc: Loc) -> str:
    out = ""
    for step in loc:
        if isinstance(step, int):
            out += f"[{step}]"
        else:
            out += f".{step}" if out else str(step)
    return out


def _model_at(kind: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model class that owns the last key of `loc` (for 'allowed keys' lists)."""
    if len(loc) == 1:
        return kind
    if kind is Gateway and len(loc) == 3 and loc[0] == "services":
        return Service
    return None


def _message(err: ErrorDetails, kind: type[BaseModel]) -> str:
    loc: Loc = tuple(err["loc"])
    etype = err["type"]
    field = dotted(loc)
    if etype == "extra_forbidden":
        key = str(loc[-1])
        owner = _model_at(kind, loc)
        if owner is None:
            return f"unknown key {key!r}; remove it"
        allowed = list(owner.model_fields)
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key {key!r}: {hint}allowed keys are {', '.join(allowed)}"
    if etype == "missing":
        key = str(loc[-1])
        example = EXAMPLES.get(key, f"{key}: ...")
        return f"missing required key {key!r}; add a line like: {example}"
    if etype == "invalid_key":
        return f"key {loc[-1]!r} is not text; keys are names like org or public_key"
    if loc and loc[-1] == "[key]":
        field = dotted(loc[:-1])
    msg = str(err["msg"]).removeprefix("Value error, ")
    template = TYPE_HINTS.get(etype)
    if template is not None:
        msg = template.format(got=_described_input(err.get("input")))
    elif etype.startswith(("greater_than", "less_than", "literal_error", "enum", "too_")):
        msg = f"{msg}{_described_input(err.get('input'))}"
    return f"{field}: {msg}" if field else msg


def _issue_from_error(err: ErrorDetails, node: Node | None, kind: type[BaseModel]) -> Issue:
    loc: Loc = tuple(s for s in err["loc"] if isinstance(s, (str, int)))
    etype = err["type"]
    if etype == "missing":
        line, col = position(node, loc[:-1])  # the mapping that lacks the key
    elif etype in ("extra_forbidden", "invalid_key"):
        line, col = position(node, loc, key=True)
    elif loc and loc[-1] == "[key]":
        line, col = position(node, loc[:-1], key=True)
    else:
        if len(loc) == 1 and _child_missing(node, loc[0]) and loc[0] in POINT_AT_INSTEAD:
            loc = (POINT_AT_INSTEAD[str(loc[0])],)
        line, col = position(node, loc)
    return Issue(line, col, _message(err, kind))


def _child_missing(node: Node | None, key: str | int) -> bool:
    return isinstance(node, MappingNode) and not any(
        isinstance(k, ScalarNode) and k.value == str(key) for k, _ in node.value)


def _capped(issues: list[Issue], total: int) -> tuple[Issue, ...]:
    """The first MAX_ISSUES_PER_FILE by position; the last line counts the rest."""
    issues.sort(key=lambda i: (i.line, i.col))
    if total > MAX_ISSUES_PER_FILE:
        last = issues[MAX_ISSUES_PER_FILE - 1]
        issues = issues[: MAX_ISSUES_PER_FILE - 1] + [
            Issue(last.line, last.col,
                  f"... and {total - MAX_ISSUES_PER_FILE + 1} more problems in this file")]
    return tuple(issues)


def check_document(data: bytes, kind: type[Tunnel | Gateway],
                   parsed: ParsedYaml | YamlProblem | None = None) -> FileCheck:
    """Parse and validate one file as `kind`. Never raises.

    `parsed` may carry the parse result made elsewhere (another process, which sends the value
    but not the node tree); if the file then has a problem it is parsed again here, for the
    positions.
    """
    if parsed is None:
        parsed = parse(data)
    elif isinstance(parsed, ParsedYaml) and parsed.node is None and parsed.value is not None:
        if not isinstance(parsed.value, dict):
            return check_document(data, kind)
        try:
            return FileCheck(kind.model_validate(parsed.value), ())
        except ValidationError:
            return check_document(data, kind)
    if not isinstance(parsed, ParsedYaml):
        return FileCheck(None, (Issue(parsed.line, parsed.col, parsed.message),))
    what = "tunnel" if kind is Tunnel else "gateway"
    if parsed.value is None:
        return FileCheck(None, (Issue(1, 1, f"file is empty; a {what} file is a mapping of keys "
                                      f"such as {', '.join(list(kind.model_fields)[:4])}"),))
    if not isinstance(parsed.node, MappingNode) or not isinstance(parsed.value, dict):
        line, col = position(parsed.node, ())
        return FileCheck(None, (Issue(line, col, f"the top level of a {what} file must be a "
                                      f"mapping of keys (org: ..., name: ...), not "
                                      f"{_kind_of(parsed.node)}"),))
    try:
        model = kind.model_validate(parsed.value)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # Locating one error walks the node tree; a file with 100,000 unknown keys must not
        # cost 100,000 walks, so only the first few (pydantic lists them in file order) are.
        issues = [_issue_from_error(e, parsed.node, kind)
                  for e in errors[: MAX_ISSUES_PER_FILE * 5]]
        return FileCheck(None, _capped(issues, len(errors)))
    return FileCheck(model, ())
