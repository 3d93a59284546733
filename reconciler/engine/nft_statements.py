"""The statements, rules and chains of our nftables table as typed values (pure), and the
canonical form a rule is compared in. `reconciler.engine.nftables` builds the table from them
and re-exports every name here.

Every value that reaches nft is typed and checked here: interface names against the Linux
name pattern, addresses and prefixes as ipaddress objects or (int, prefix length) pairs,
ports as ints, chain and set names from fixed patterns. So no text from the repo is ever
spliced into an nft program, and quoting cannot be got wrong.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

Element = tuple[str | int, ...]

IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
# input/forward, or a service profile chain: svc_<service>_<service>... or svc_h<hash>.
CHAIN_RE = re.compile(r"input|forward|svc_[a-z0-9][a-z0-9_-]{0,195}")
SET_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
# Rule comments are fixed strings in the renderer, for people reading `nft list`; never
# compared (see canonical_rule), so they are no longer how drift is found.
COMMENT_RE = re.compile(r"[a-z0-9 ,:/<>=-]{0,120}")


class NftValueError(ValueError):
    """A value that must not reach nft (bad name, port, prefix)."""


def check_pattern(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise NftValueError(f"{value!r} is not a valid {what}")
    return value


def ifname(value: str) -> str:
    return check_pattern(IFNAME_RE, value, "interface name")


def chain_name(value: str) -> str:
    return check_pattern(CHAIN_RE, value, "chain name")


def set_name(value: str) -> str:
    return check_pattern(SET_RE, value, "set name")


# --------------------------------------------------------------------------- statements


@dataclass(frozen=True)
class IfMatch:
    key: Literal["iifname", "oifname"]
    op: Literal["==", "!="]
    name: str

    def __post_init__(self) -> None:
        ifname(self.name)

    def text(self) -> str:
        return f'{self.key} {"!= " if self.op == "!=" else ""}"{self.name}"'

    def json(self) -> dict[str, Any]:
        return {"match": {"op": self.op, "left": {"meta": {"key": self.key}}, "right": self.name}}


@dataclass(frozen=True)
class CtState:
    states: tuple[Literal["established", "related", "new", "invalid"], ...]

    def text(self) -> str:
        return "ct state " + ",".join(self.states)

    def json(self) -> dict[str, Any]:
        # nft lists one state as a plain string and several as a list
        right: Any = self.states[0] if len(self.states) == 1 else list(self.states)
        return {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": right}}


@dataclass(frozen=True)
class CtDirection:
    """`ct direction reply`: a packet that answers a connection the other side opened. With
    it, `established` accepts only replies: a tenant's own packets on a connection opened while
    our table was missing, or on a service since removed, are checked again like new ones."""

    direction: Literal["original", "reply"]

    def text(self) -> str:
        return f"ct direction {self.direction}"

    def json(self) -> dict[str, Any]:
        return {"match": {"op": "==", "left": {"ct": {"key": "direction"}},
                          "right": self.direction}}


# The address family of a match: `ip` (IPv4) or `ip6`. In our inet table a match of one
# family never matches a packet of the other, so each family's rules are written out.
Family = Literal["ip", "ip6"]


def _family(value: str) -> Family:
    if value not in ("ip", "ip6"):
        raise NftValueError(f"{value!r} is not an address family (ip, ip6)")
    return "ip" if value == "ip" else "ip6"


@dataclass(frozen=True)
class DaddrIs:
    """`ip daddr 10.20.0.1` or, for an IPv6 address, `ip6 daddr fd42::1`."""

    addr: ipaddress.IPv4Address | ipaddress.IPv6Address

    def __post_init__(self) -> None:
        if not isinstance(self.addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            raise NftValueError(f"{self.addr!r} is not an IP address")

    @property
    def family(self) -> Family:
        return "ip" if self.addr.version == 4 else "ip6"

    def text(self) -> str:
        return f"{self.family} daddr {self.addr}"

    def json(self) -> dict[str, Any]:
        return {"match": {"op": "==", "left": {"payload": {"protocol": self.family,
                                                           "field": "daddr"}},
                          "right": str(self.addr)}}


@dataclass(frozen=True)
class DaddrInSet:
    set: str
    family: Family = "ip"

    def __post_init__(self) -> None:
        set_name(self.set)
        _family(self.family)

    def text(self) -> str:
        return f"{self.family} daddr @{self.set}"

    def json(self) -> dict[str, Any]:
        return {"match": {"op": "==", "left": {"payload": {"protocol": self.family,
                                                           "field": "daddr"}},
                          "right": f"@{self.set}"}}


# ICMP types by name: ping, and the errors that quote a packet (so conntrack can mark them
# `related`). By type, not `meta l4proto { icmp, ipv6-icmp }`: nft resolves protocol names
# through /etc/protocols and lists them as numbers where that file is missing (minimal images),
# which would make the same rule compare differently from host to host.
ECHO_REQUEST = ("echo-request",)
ICMP_ERRORS = {"ip": ("destination-unreachable", "time-exceeded", "parameter-problem"),
               "ip6": ("destination-unreachable", "packet-too-big", "time-exceeded",
                       "parameter-problem")}
_ICMP_TYPES = frozenset(ECHO_REQUEST + ICMP_ERRORS["ip"] + ICMP_ERRORS["ip6"])


@dataclass(frozen=True)
class IcmpType:
    """`icmp type echo-request`, `icmp type { a, b }`; with family ip6 the icmpv6 ones."""

    types: tuple[str, ...]
    family: Family = "ip"

    def __post_init__(self) -> None:
        _family(self.family)
        if not self.types or not _ICMP_TYPES.issuperset(self.types):
            raise NftValueError(f"bad icmp types {self.types!r}")

    @property
    def proto(self) -> str:
        return "icmp" if self.family == "ip" else "icmpv6"

    def text(self) -> str:
        types = self.types[0] if len(self.types) == 1 else f"{{ {', '.join(self.types)} }}"
        return f"{self.proto} type {types}"

    def json(self) -> dict[str, Any]:
        right: Any = self.types[0] if len(self.types) == 1 else {"set": list(self.types)}
        return {"match": {"op": "==", "left": {"payload": {"protocol": self.proto,
                                                           "field": "type"}},
                          "right": right}}


@dataclass(frozen=True)
class DportIn:
    proto: Literal["udp", "tcp"]
    ports: tuple[tuple[int, int], ...]  # sorted, non-overlapping (first, last) ranges

    def __post_init__(self) -> None:
        if self.proto not in ("udp", "tcp") or not self.ports:
            raise NftValueError(f"bad port match {self.proto!r} {self.ports!r}")
        last = -1
        for a, b in self.ports:
            if not (type(a) is int and type(b) is int and last < a <= b <= 65535):
                raise NftValueError(f"bad port range {a!r}-{b!r} in {self.ports!r}")
            last = b

    def text(self) -> str:
        items = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in self.ports)
        return f"{self.proto} dport {{ {items} }}"

    def json(self) -> dict[str, Any]:
        items: list[Any] = [a if a == b else {"range": [a, b]} for a, b in self.ports]
        return {"match": {"op": "==", "left": {"payload": {"protocol": self.proto,
                                                           "field": "dport"}},
                          "right": {"set": items}}}


@dataclass(frozen=True)
class SaddrVmap:
    map: str
    family: Family = "ip"

    def __post_init__(self) -> None:
        set_name(self.map)
        _family(self.family)

    def text(self) -> str:
        return f"{self.family} saddr vmap @{self.map}"

    def json(self) -> dict[str, Any]:
        return {"vmap": {"key": {"payload": {"protocol": self.family, "field": "saddr"}},
                         "data": f"@{self.map}"}}


@dataclass(frozen=True)
class Counter:
    def text(self) -> str:
        return "counter"

    def json(self) -> dict[str, Any]:
        return {"counter": {"packets": 0, "bytes": 0}}


@dataclass(frozen=True)
class Verdict:
    kind: Literal["accept", "drop"]

    def text(self) -> str:
        return self.kind

    def json(self) -> dict[str, Any]:
        return {self.kind: None}


Statement = (IfMatch | CtDirection | CtState | DaddrIs | DaddrInSet | IcmpType
             | DportIn | SaddrVmap | Counter | Verdict)


@dataclass(frozen=True)
class Rule:
    stmts: tuple[Statement, ...]
    comment: str = ""

    def __post_init__(self) -> None:
        check_pattern(COMMENT_RE, self.comment, "rule comment")

    def text(self) -> str:
        body = " ".join(s.text() for s in self.stmts)
        return f'{body} comment "{self.comment}"' if self.comment else body

    def expr(self) -> list[dict[str, Any]]:
        return [s.json() for s in self.stmts]

    def body(self) -> str:
        return canonical_rule(self.expr())


@dataclass(frozen=True)
class Hook:
    hook: Literal["input", "forward"]
    priority: int
    policy: Literal["accept", "drop"]

    def __post_init__(self) -> None:
        if type(self.priority) is not int or self.hook not in ("input", "forward") \
                or self.policy not in ("accept", "drop"):
            raise NftValueError(f"bad base chain {self!r}")


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[Rule, ...]
    hook: Hook | None = None

    def __post_init__(self) -> None:
        chain_name(self.name)

    def element(self) -> Element:
        if self.hook is None:
            return ("chain", self.name)
        return ("chain", self.name, "filter", self.hook.hook, self.hook.priority,
                self.hook.policy)


# --------------------------------------------------------------------------- canonical


def _canon(value: Any) -> Any:
    if isinstance(value, dict):
        if "counter" in value and len(value) == 1:
            return {"counter": None}  # packet and byte counts are not part of a rule
        if "set" in value and len(value) == 1 and isinstance(value["set"], list):
            items = [_canon(v) for v in value["set"]]
            if len(items) == 1:
                return items[0]  # nft lists `{ 443 }` as `443`
            return {"set": sorted(items, key=lambda v: json.dumps(v, sort_keys=True))}
        return {k: _canon(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canon(v) for v in value]
    return value


def canonical_rule(expr: Any) -> str:
    """The one text both sides of a rule comparison reduce to: the JSON expression, keys
    sorted, counter values dropped, anonymous sets in sorted order and `{ x }` as `x`."""
    return json.dumps(_canon(expr), sort_keys=True, separators=(",", ":"))


def port_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Overlapping or adjacent ranges merged: nft rejects overlapping intervals in one set."""
    merged: list[list[int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return tuple((a, b) for a, b in merged)
