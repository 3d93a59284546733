"""Typed host state: what the render stage wants and what the observe stage saw.

Both sides use the same frozen values in the same canonical form (sorted, normalised CIDRs),
so `plan(desired, observed)` can compare them with `==` and an unchanged host plans nothing.
No secret lives here: a preshared key appears only as its digest; the keys themselves travel
in `Secrets`, whose repr hides them.
This module imports nothing from the package, so every stage can depend on it.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Our own route protocol number (rtnetlink allows 0-255; 252 is unassigned in
# /etc/iproute2/rt_protos). Routes carrying it are ours across restarts; all others are foreign.
ROUTE_PROTO = 252
ROUTE_PROTO_NAME = "tunnelctl"

FIREWALL_FAMILY = "inet"
FIREWALL_TABLE = "tunnelctl"
TENANT_MAP = "tenant_profiles"  # our table's interval map from tenant LAN prefix to service chain
TENANT_HOSTS = "tenant_hosts"  # its hash map from a tenant's own /32 address to service chain
# A dual-stack gateway's IPv6 twins of the two: own /128s in a hash map, IPv6 LANs in an
# interval map, jumping to the same service chains.
TENANT_MAP6 = "tenant_profiles6"
TENANT_HOSTS6 = "tenant_hosts6"
HOST_MAPS = (TENANT_HOSTS, TENANT_HOSTS6)  # the hash maps (no interval walk on delete)
# All four: the element drift a quick change reads back.
TENANT_MAPS = (TENANT_HOSTS, TENANT_MAP, TENANT_HOSTS6, TENANT_MAP6)


def _v4(text: str) -> tuple[int, int] | None:
    """'a.b.c.d[/n]' -> (network as int, prefix) with host bits cleared; None if not plain IPv4.

    A hand-rolled fast path: ipaddress costs ~20 us per network, which at 16k tenants with
    LANs is most of a render or observe cycle.
    """
    addr, _, plen = text.partition("/")
    parts = addr.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and (p == "0" or p[0] != "0")
                                  for p in parts):
        return None
    if plen and not (plen.isdigit() and len(plen) <= 2):
        return None
    a, b, c, d = (int(p) for p in parts)
    length = int(plen) if plen else 32
    if a > 255 or b > 255 or c > 255 or d > 255 or length > 32:
        return None
    value = (a << 24) | (b << 16) | (c << 8) | d
    return value & ~((1 << (32 - length)) - 1) & 0xFFFFFFFF, length


def v4_prefix(text: str) -> tuple[int, int] | None:
    """'a.b.c.d[/n]' -> (network as int, prefix length); None when not plain IPv4."""
    return _v4(text)


def _v4_text(value: int, length: int) -> str:
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}/{length}"


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_V4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?:/(3[0-2]|[12]?[0-9]))?",
                           re.ASCII)

# The same few thousand prefixes are canonicalised on every cycle (render and observe both),
# so the pure converters below remember their answers; sized for a full /16 pool with LANs.
CANONICAL_CACHE = 1 << 16


@functools.lru_cache(maxsize=CANONICAL_CACHE)
def canonical_cidr(text: str) -> str:
    """'10.20.0.6' -> '10.20.0.6/32'; host bits cleared; IPv6 compressed."""
    text = text.strip()
    # Fast path for what `wg`, `ip` and `nft` print: a plain dotted quad without leading
    # zeros and a plain prefix length; an already canonical one is returned as it is.
    m = _CANONICAL_V4.fullmatch(text)
    if m is not None:
        a, b, c, d, plen = m.groups()
        length = int(plen) if plen is not None else 32
        value = (int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d)
        net = value & ~((1 << (32 - length)) - 1) & 0xFFFFFFFF
        if net == value and plen is not None:
            return text
        return _v4_text(net, length)
    v4 = _v4(text)
    if v4 is not None:
        return _v4_text(*v4)
    return str(ipaddress.ip_network(text, strict=False))


def cidr_sort_key(text: str) -> tuple[int, int, int]:
    """(IP version, network as int, prefix length) of a canonical CIDR."""
    v4 = _v4(text)
    if v4 is not None:
        return (4, v4[0], v4[1])
    net = ipaddress.ip_network(text)
    return (net.version, int(net.network_address), net.prefixlen)


def canonical_ips(items: Iterable[str]) -> tuple[str, ...]:
    """Normalised, de-duplicated and sorted by address: the one form both sides compare in."""
    return _canonical_ips(tuple(items))


@functools.lru_cache(maxsize=CANONICAL_CACHE)
def _canonical_ips(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({canonical_cidr(i) for i in items if i.strip()}, key=cidr_sort_key))


@dataclass(frozen=True)
class InterfaceConfig:
    name: str
    listen_port: int
    public_key: str | None  # derived from the private key; None = no key set
    address: str | None  # "10.20.0.1/16"; several addresses are joined with "," in sorted order
    mtu: int | None
    up: bool

    def addresses(self) -> tuple[str, ...]:
        return tuple(a for a in (self.address or "").split(",") if a)


@dataclass(frozen=True)
class Peer:
    public_key: str
    allowed_ips: tuple[str, ...]  # canonical_ips() form
    psk_digest: str | None  # reconciler.engine.psk.psk_digest of the PSK; None = no PSK
    keepalive: int  # seconds; 0 = off
    # Display only (org/name from the repo); never part of equality, observed peers have none.
    owner: str | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        short = f"{self.public_key[:8]}…"
        return f"{self.owner} ({short})" if self.owner else f"({short})"


@dataclass(frozen=True)
class PeerStatus:
    """Live counters: read for status and metrics, never planned on (roaming is not drift)."""

    public_key: str
    endpoint: str | None
    latest_handshake: int  # unix seconds; 0 = never
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True, order=True)
class Route:
    dst: str  # canonical CIDR
    dev: str
    table: str = "main"
    proto: int = ROUTE_PROTO

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.table, self.dst, self.dev)


@dataclass(frozen=True)
class Firewall:
    """Our nftables table in canonical form.

    `elements` is a structural description that both the typed table (render) and
    `nft -j list table` (observe) reduce to: ("chain", name, type, hook, prio, policy),
    ("rule", chain, index, body) where body is the canonical JSON of the rule's expression
    (reconciler.engine.nftables.canonical_rule: comments and counter values left out), ("map",
    name, key, value, flags) and ("elem", map, key, value). A flushed table, a deleted, moved
    or edited rule (a drop made accept, whatever its comment) or a changed element all change
    it. `fingerprint` is a digest of `elements` for display. `text` is loadable nft syntax of
    the table (rendered, or listed for a rollback snapshot) and not compared.
    """

    family: str
    table: str
    fingerprint: str
    elements: frozenset[tuple[str | int, ...]]
    text: str = field(default="", compare=False, repr=False)

    @staticmethod
    def digest(elements: Iterable[tuple[str | int, ...]]) -> str:
        """An order-free digest: the sum (mod 2**128) of each element's own 128-bit hash,
        hashed once more. Each element's hash is remembered, so a table that differs from
        the last one by a few elements costs a dict lookup per element, not a sort and
        re-hash of all 21.8k (16k tenants)."""
        memo = _element_hashes
        total = 0
        for e in elements:
            h = memo.get(e)
            if h is None:
                if len(memo) >= 1 << 16:  # ~3x a 16k-tenant table; ~7 MiB at most
                    memo.clear()
                h = memo[e] = int.from_bytes(
                    hashlib.blake2b(repr(e).encode(), digest_size=16).digest(), "big")
            total += h
        total &= (1 << 128) - 1
        return hashlib.sha256(total.to_bytes(16, "big")).hexdigest()[:16]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.elements:
            out[str(e[0])] = out.get(str(e[0]), 0) + 1
        return out

    def summary(self, short: bool = False) -> str:
        c = self.counts()
        name = "" if short else f"{self.family} {self.table} "
        return (f"{name}fp={self.fingerprint} chains={c.get('chain', 0)} "
                f"rules={c.get('rule', 0)} elements={c.get('elem', 0)}")


_element_hashes: dict[tuple[str | int, ...], int] = {}


@dataclass(frozen=True)
class ConfigFile:
    """The interface config file (wg-quick format) the host reboots from; holds secrets,
    so only its digest is kept. digest None = file absent."""

    path: str
    digest: str | None

    @staticmethod
    def digest_of(content: bytes) -> str:
        return hashlib.sha256(content).hexdigest()[:16]


@dataclass(frozen=True)
class HostState:
    interface: InterfaceConfig | None
    peers: Mapping[str, Peer]  # by public key
    routes: frozenset[Route]
    firewall: Firewall | None
    config: ConfigFile | None = None  # None on the desired side = do not manage the file


@dataclass(frozen=True)
class ObservedState(HostState):
    peer_status: Mapping[str, PeerStatus] = field(default_factory=dict)


class Secrets:
    """The gateway private key and each peer's PSK. Never printed: repr/str hide the values."""

    __slots__ = ("_config_text", "_private_key", "_psks")

    def __init__(self, private_key: str | None, psks: Mapping[str, str],
                 config_text: str | None = None) -> None:
        self._private_key = private_key
        self._psks = dict(psks)
        self._config_text = config_text  # the rendered config file: it holds the keys too

    @property
    def config_text(self) -> str | None:
        return self._config_text

    @property
    def private_key(self) -> str | None:
        return self._private_key

    @property
    def psks(self) -> Mapping[str, str]:
        return self._psks

    def psk(self, public_key: str) -> str | None:
        return self._psks.get(public_key)

    def __repr__(self) -> str:
        key = "<hidden>" if self._private_key else None
        return f"Secrets(private_key={key}, psks=<{len(self._psks)} hidden>)"

    __str__ = __repr__


# ------------------------------------------------------------------------------ lineage
# A state's peer map is often another's with a few keys changed: the patched render of a
# one-tenant change, the verify read-back of the peers a plan touched. Both record that
# here, so plan compares only those keys against a pair of maps it already found equal,
# instead of walking 16k peers (issue 13: ~20 ms per plan, two plans per change). The maps
# are never mutated once recorded (they are built, recorded, then only read); the registry
# holds them, so an id cannot be reused while it names one.
_LINEAGE_MAX = 2  # one cycle's: each holds a 16k-peer map (RSS)
_lineage: dict[int, tuple[Mapping[str, Peer], Mapping[str, Peer], frozenset[str]]] = {}


def note_derived(new: Mapping[str, Peer], base: Mapping[str, Peer],
                 keys: Iterable[str]) -> None:
    """`new` is `base` with at most `keys` added, changed or removed."""
    if len(_lineage) >= _LINEAGE_MAX:
        del _lineage[next(iter(_lineage))]  # the oldest
    _lineage[id(new)] = (new, base, frozenset(keys))


def changed_keys(new: Mapping[str, Peer], base: Mapping[str, Peer]) -> frozenset[str] | None:
    """The keys where `new` may differ from `base` (empty for the same map), following up
    to two recorded derivations; None when unknown (compare in full)."""
    if new is base:
        return frozenset()
    out: frozenset[str] = frozenset()
    for _ in range(2):
        entry = _lineage.get(id(new))
        if entry is None or entry[0] is not new:
            return None
        out |= entry[2]
        if entry[1] is base:
            return out
        new = entry[1]
    return None


# The same for a table's elements: the patched render's set is the last one with a few
# elements taken out and put in, so the element delta of a one-tenant change is those few
# instead of two differences of 21.8k-element sets. Sets found equal by plan are recorded as
# equal, so a delta against the observed table (an equal set, not the same object) is known.
Elements = frozenset[tuple[str | int, ...]]
_elements_from: dict[int, tuple[Elements, Elements, Elements, Elements]] = {}
_elements_same: list[tuple[Elements, Elements]] = []


def note_elements(new: Elements, base: Elements, removed: Elements, added: Elements) -> None:
    """`new` is `base` without `removed` and with `added`."""
    if len(_elements_from) >= _LINEAGE_MAX:
        del _elements_from[next(iter(_elements_from))]
    _elements_from[id(new)] = (new, base, removed, added)


def note_same_elements(a: Elements, b: Elements) -> None:
    """`a` == `b`, found by a comparison (two objects)."""
    if a is not b:
        del _elements_same[:-1]  # the last pair only: each holds a 21.8k-element set
        _elements_same.append((a, b))


def elements_delta(old: Elements, new: Elements) -> tuple[Elements, Elements] | None:
    """(old - new, new - old) when `new` was recorded as derived from `old` or from a set
    recorded equal to it; None when unknown."""
    entry = _elements_from.get(id(new))
    if entry is None or entry[0] is not new:
        return None
    base = entry[1]
    if base is not old and not any((a is base and b is old) or (a is old and b is base)
                                   for a, b in _elements_same):
        return None
    removed, added = entry[2], entry[3]
    return (frozenset(e for e in removed if e in old and e not in new),
            frozenset(e for e in added if e not in old and e in new))
