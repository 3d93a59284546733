"""Pure parsers for what `wg`, `ip -json` and `nft -j` print. No processes, no I/O.

Each is tested on captured real output in tests/fixtures/. They return the canonical forms of
`reconciler.engine.hoststate`, so observed and desired state compare with `==`.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.engine.hoststate import (
    FIREWALL_FAMILY,
    FIREWALL_TABLE,
    ROUTE_PROTO,
    ROUTE_PROTO_NAME,
    Firewall,
    Peer,
    PeerStatus,
    Route,
    canonical_cidr,
    canonical_ips,
)
from reconciler.engine.nftables import canonical_rule

NONE = "(none)"


class ParseError(ValueError):
    """Output did not have the shape the parser knows; names what and where."""


# ---------------------------------------------------------------------------- wg show dump


@dataclass(frozen=True)
class WgInterfaceLine:
    public_key: str | None
    listen_port: int
    fwmark: int  # 0 = off
    has_private_key: bool


@dataclass(frozen=True)
class WgDump:
    interface: WgInterfaceLine
    peers: dict[str, Peer]
    status: Mapping[str, PeerStatus]


class LazyStatus(Mapping[str, PeerStatus]):
    """Live counters by public key, built from the dump's fields only when one is read: a
    no-op cycle on 16k peers plans on the peers and never needs 16k PeerStatus objects."""

    __slots__ = ("_body", "_parsed")

    def __init__(self, rows: dict[str, tuple[str, str, str, str]] | None = None,
                 body: str = "") -> None:
        # key -> (endpoint, latest handshake, rx bytes, tx bytes), as printed; or the dump's
        # peer lines, split only when a status is first read.
        self._parsed = rows
        self._body = body

    @property
    def _rows(self) -> dict[str, tuple[str, str, str, str]]:
        if self._parsed is None:
            self._parsed = {r[0]: (r[2], r[4], r[5], r[6]) for r in
                            (ln.split("\t") for ln in self._body.splitlines() if ln.strip())}
            self._body = ""
        return self._parsed

    def __getitem__(self, key: str) -> PeerStatus:
        endpoint, handshake, rx, tx = self._rows[key]
        return PeerStatus(key, None if endpoint == NONE else endpoint, int(handshake), int(rx),
                          int(tx))

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def updated(self, other: LazyStatus, keys: Iterable[str]) -> LazyStatus:
        """This status with `keys` taken from `other` (dropped where `other` lacks them)."""
        rows = dict(self._rows)
        for key in keys:
            if key in other._rows:
                rows[key] = other._rows[key]
            else:
                rows.pop(key, None)
        return LazyStatus(rows)


def _wg_lines(text: str) -> list[list[str]]:
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not rows:
        raise ParseError("wg show dump: empty output (no interface line)")
    if len(rows[0]) != 4:
        raise ParseError(f"wg show dump line 1: expected 4 fields, got {len(rows[0])}")
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != 8:
            raise ParseError(f"wg show dump line {n}: expected 8 fields, got {len(row)}")
    return rows


def parse_wg_dump(text: str, psk_digest: Callable[[str], str], *,
                  remember: bool = True) -> WgDump:
    """`wg show <if> dump`: first line interface, then one line per peer.

    Preshared keys are reduced to `psk_digest(key)` at once; the key is never kept.

    Fast path: a peer whose line has the same allowed IPs, keepalive and PSK as in the last
    full dump parsed (`remember`) is the very same Peer object, found by one dict lookup
    instead of canonicalising its IPs and hashing its PSK again. The PSK is compared by
    Python's per-process keyed 64-bit string hash, as strong as the 64-bit digest kept for it
    anyway; the key itself is never stored.
    """
    global _peer_memo, _last_dump, _expected_dump
    head, _, body = text.lstrip("\n").partition("\n")
    last, expected = _last_dump, _expected_dump
    if remember:
        _expected_dump = None  # one read-back only
    if remember and (last is not None or expected is not None):
        # Fastest path (every no-op cycle): the fields that make a peer, found by one C-level
        # regex pass, hash the same as in the last full dump: the very same peers. The hash
        # is Python's keyed 64-bit one, as strong as the 64-bit PSK digests compared anyway;
        # neither a key nor the interface line (it holds the private key) is stored.
        stable = _STABLE_FIELDS.findall(body)
        lines = body.count("\n") + (0 if body.endswith("\n") or not body else 1)
        # wireguard-go lists peers in Go map order, different on every read: the peers are
        # compared as a set (no two lines share a public key, so none is lost).
        if len(stable) == lines and last is not None and hash(head) == last[0]:
            fields = frozenset(stable)
            if len(fields) == lines and hash(fields) == last[1]:
                return WgDump(last[2], last[3], LazyStatus(body=body))
        if len(stable) == lines and expected is not None and expected[1] == lines:
            # The read-back of a big apply: exactly the peers expect_peers was told of.
            fields = frozenset(stable)
            if len(fields) == lines and hash(fields) == expected[0]:
                iface = _interface_line(_wg_lines(head)[0])
                _last_dump = (hash(head), expected[0], iface, expected[2])
                return WgDump(iface, expected[2], LazyStatus(body=body))
    rows = _wg_lines(text)
    iface = _interface_line(rows[0])
    peers: dict[str, Peer] = {}
    status: dict[str, tuple[str, str, str, str]] = {}
    memo = _peer_memo
    seen: dict[str, tuple[str, str, int, Peer]] = {}
    for key, psk, endpoint, allowed, handshake, rx, tx, keepalive in rows[1:]:
        psk_hash = hash(psk)
        m = memo.get(key)
        if m is not None and m[0] == allowed and m[1] == keepalive and m[2] == psk_hash:
            peer = m[3]
        else:
            peer = Peer(
                public_key=key,
                allowed_ips=() if allowed == NONE else canonical_ips(allowed.split(",")),
                psk_digest=None if psk == NONE else psk_digest(psk),
                keepalive=0 if keepalive == "off" else int(keepalive),
            )
        seen[key] = (allowed, keepalive, psk_hash, peer)
        peers[key] = peer
        status[key] = (endpoint, handshake, rx, tx)
    if remember:
        _peer_memo = seen
        # The same (key, psk, allowed ips, keepalive) tuples the regex finds, from the rows.
        fields = frozenset((r[0], r[1], r[3], r[7]) for r in rows[1:])
        _last_dump = ((hash(head), hash(fields), iface, peers)
                      if len(fields) == len(rows) - 1 else None)
    return WgDump(iface, peers, LazyStatus(status))


def _interface_line(row: list[str]) -> WgInterfaceLine:
    priv, pub, port, fwmark = row
    return WgInterfaceLine(
        public_key=None if pub == NONE else pub,
        listen_port=int(port),
        fwmark=0 if fwmark == "off" else int(fwmark, 0),
        has_private_key=priv != NONE,
    )


def expect_peers(peers: Mapping[str, Peer], psk: Callable[[str], str | None]) -> None:
    """Seed the dump memo with the peers just applied, for the read-back after a big apply
    (a cold converge: 16k peers nothing is known of). A peer's dump line that shows exactly
    the fields the peer's own canonical form prints (its allowed IPs in canonical order, its
    keepalive, its PSK by hash) parses to an equal Peer, so the line takes the memo's path
    instead of canonicalising and hashing again; any other line is parsed in full. `psk`
    gives a peer's key (kept only as its hash, as the memo keeps every key)."""
    global _peer_memo, _expected_dump
    memo = dict(_peer_memo)
    # The next dump's stable fields if it holds exactly these peers: then it parses to them
    # by one regex pass and a set hash, like a no-op cycle's dump (parse_wg_dump).
    fields: list[tuple[str, str, str, str]] | None = []
    for key, peer in peers.items():
        value = psk(key) if peer.psk_digest is not None else NONE
        allowed = ",".join(peer.allowed_ips) if peer.allowed_ips else NONE
        keepalive = str(peer.keepalive) if peer.keepalive else "off"
        if value is None:
            fields = None
            continue
        if fields is not None:
            fields.append((key, value, allowed, keepalive))
        if key not in memo:
            memo[key] = (allowed, keepalive, hash(value), peer)
    _peer_memo = memo
    _expected_dump = None
    if fields is not None and fields:
        expected = frozenset(fields)
        if len(expected) == len(fields):
            _expected_dump = (hash(expected), len(fields), dict(peers))


# Peers of the last full dump by public key: (allowed ips, keepalive, hash(psk), Peer).
_peer_memo: dict[str, tuple[str, str, int, Peer]] = {}
# The last full dump: (hash of its interface line, hash of its peers' stable fields, the
# parsed interface line, the peers). Callers never mutate a WgDump's peers.
_last_dump: tuple[int, int, WgInterfaceLine, dict[str, Peer]] | None = None
# What expect_peers was told of: (hash of the peers' stable fields, how many, the peers).
_expected_dump: tuple[int, int, dict[str, Peer]] | None = None
# One peer line: key, psk, (endpoint), allowed ips, (handshake, rx, tx), keepalive.
_STABLE_FIELDS = re.compile(r"^([^\t\n]*)\t([^\t\n]*)\t[^\t\n]*\t([^\t\n]*)\t[^\t\n]*"
                            r"\t[^\t\n]*\t[^\t\n]*\t([^\t\n]*)$", re.MULTILINE)


def parse_wg_dump_secrets(text: str) -> tuple[str | None, dict[str, str]]:
    """The private key and every peer's PSK from a dump, for the in-memory rollback snapshot."""
    rows = _wg_lines(text)
    priv = rows[0][0]
    psks = {row[0]: row[1] for row in rows[1:] if row[1] != NONE}
    return (None if priv == NONE else priv), psks


# --------------------------------------------------------------------------- UAPI keys


def b64_to_hex(value: str) -> str:
    """A WireGuard key as the control socket (UAPI) writes it: hex, not base64."""
    return base64.b64decode(value).hex()


# ------------------------------------------------------------------------------ ip -json


@dataclass(frozen=True)
class LinkInfo:
    name: str
    mtu: int
    up: bool  # administratively up (IFF_UP), not operstate: wireguard reports UNKNOWN
    addresses: tuple[str, ...]  # IPv4 "addr/prefix", sorted; link-local IPv6 is not ours


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text) if text.strip() else []
    except json.JSONDecodeError as exc:
        raise ParseError(f"{what}: not JSON ({exc})") from None


def parse_ip_addr(text: str) -> LinkInfo | None:
    """`ip -json addr show dev <if>`: one link with its flags, mtu and addresses.

    IPv4 and IPv6 addresses, sorted as text (render.interface_address joins them the same
    way). Scope-link IPv6 addresses (the fe80:: the kernel may give a tun device) are the
    kernel's, not ours to manage, and are left out."""
    data = _json(text, "ip -json addr")
    if not data:
        return None
    link = data[0]
    addrs = [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
             if a.get("family") == "inet"
             or (a.get("family") == "inet6" and a.get("scope") != "link")]
    addrs = sorted(str(ipaddress.ip_interface(a)) for a in addrs)
    return LinkInfo(link["ifname"], int(link["mtu"]), "UP" in link.get("flags", []), tuple(addrs))


# Names `ip` prints for route protocols (rtnetlink.h and /etc/iproute2/rt_protos).
_PROTO_NAMES = {"redirect": 1, "kernel": 2, "boot": 3, "static": 4, "gated": 8, "ra": 9,
                "mrt": 10, "zebra": 11, "bird": 12, "dnrouted": 13, "xorp": 14, "ntk": 15,
                "dhcp": 16, "keepalived": 18, "babel": 42, "openr": 99, "bgp": 186,
                "isis": 187, "ospf": 188, "rip": 189, "eigrp": 192,
                ROUTE_PROTO_NAME: ROUTE_PROTO}
_UNICAST = {None, "unicast", "1"}


def _proto_number(value: Any) -> int:
    text = str(value)
    if text.isdigit():
        return int(text)
    return _PROTO_NAMES.get(text, -1)


def parse_routes(text: str, *, dev: str | None = None, proto: int | None = None) -> frozenset[Route]:
    """`ip -json route show [table all] [dev D] [proto P]`; the same text as last time (our
    routes carry no counters, so every no-op cycle) is not parsed again."""
    key = (text, dev, proto)
    last = _last_routes
    if last is not None and last[0] == key:
        return last[1]
    out = _parse_routes(text, dev=dev, proto=proto)
    globals()["_last_routes"] = (key, out)
    return out


_last_routes: tuple[tuple[str, str | None, int | None], frozenset[Route]] | None = None


def _parse_routes(text: str, *, dev: str | None = None,
                  proto: int | None = None) -> frozenset[Route]:
    """`ip -json route show [table all] [dev D] [proto P]`.

    `ip` leaves out the keys it filtered on (dev, protocol) and `table` for main, so the filter
    values are passed in as defaults. Local/broadcast/multicast entries are not routes we own
    and are skipped.
    """
    out: set[Route] = set()
    for r in _json(text, "ip -json route"):
        if r.get("type") not in _UNICAST:
            continue
        dst = r.get("dst")
        if dst in (None, "default"):
            dst = "0.0.0.0/0" if "." in str(r.get("gateway", ".")) else "::/0"
        route_dev = r.get("dev", dev)
        if route_dev is None:
            continue  # e.g. multipath without a single device: never one of ours
        table = str(r.get("table", "main"))
        table = "main" if table == "254" else table
        proto_value = r.get("protocol", proto if proto is not None else "boot")
        out.add(Route(canonical_cidr(dst), route_dev, table, _proto_number(proto_value)))
    return frozenset(out)


_HOST_DESTINATIONS = _UNICAST | {"local"}  # not blackhole/unreachable/prohibit/broadcast


def parse_host_routes(text: str) -> list[tuple[str, str, str, str]]:
    """`ip -4|-6 -json route show table all`: (dst, dev, table, proto) of every route that sends
    traffic somewhere, whoever made it. A multipath route is listed under its first hop's dev."""
    out = []
    for r in _json(text, "ip -json route"):
        if r.get("type") not in _HOST_DESTINATIONS or r.get("dst") in (None, "default"):
            continue
        hops = r.get("nexthops") or [{}]
        dev = r.get("dev") or hops[0].get("dev") or "?"
        table = str(r.get("table", "main"))
        out.append((canonical_cidr(str(r["dst"])), dev, "main" if table == "254" else table,
                    str(r.get("protocol", "boot"))))
    return out


# ------------------------------------------------------------------------------- nft -j

def _nft_value(value: Any) -> str:
    """A set key or map value from nft JSON, as canonical text."""
    if isinstance(value, str):
        if value.startswith("@"):
            return value
        try:
            return canonical_cidr(value)
        except ValueError:
            return value
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, dict):
        if "elem" in value:  # element carrying attributes (counter, timeout, comment)
            return _nft_value(value["elem"].get("val"))
        if "prefix" in value:
            p = value["prefix"]
            return canonical_cidr(f"{p['addr']}/{p['len']}")
        if "range" in value:
            lo, hi = (_nft_value(v).split("/")[0] for v in value["range"])
            try:
                nets = list(ipaddress.summarize_address_range(ipaddress.ip_address(lo),
                                                              ipaddress.ip_address(hi)))
                if len(nets) == 1:
                    return str(nets[0])
            except (ValueError, TypeError):
                pass
            return f"{lo}-{hi}"
        for verdict in ("jump", "goto"):
            if verdict in value:
                return f"{verdict} {value[verdict]['target']}"
        if len(value) == 1:
            (k, v), = value.items()
            if v is None:  # {"accept": null}
                return str(k)
        return json.dumps(value, sort_keys=True)
    return json.dumps(value, sort_keys=True)


def nft_table_absent(stderr: str) -> bool:
    """Does `nft list table` stderr say the table does not exist (as opposed to failing)?"""
    return "No such file or directory" in stderr


def firewall_from_elements(elements: Iterable[tuple[str | int, ...]], text: str = "",
                           family: str = FIREWALL_FAMILY, table: str = FIREWALL_TABLE) -> Firewall:
    frozen = frozenset(elements)
    digest = _digests.get(frozen)
    if digest is None:
        digest = Firewall.digest(frozen)
        if len(_digests) >= 4:
            _digests.pop(next(iter(_digests)))
        _digests[frozen] = digest
    return Firewall(family, table, digest, frozen, text)


# The last few tables' fingerprints: an unchanged table (every no-op cycle) is not sorted and
# hashed again. A frozenset caches its own hash, so a hit costs one set comparison.
_digests: dict[frozenset[tuple[str | int, ...]], str] = {}


def parse_nft_table(text: str, family: str = FIREWALL_FAMILY,
                    table: str = FIREWALL_TABLE) -> Firewall | None:
    """`nft -j list table <family> <table>` -> canonical Firewall; empty output -> None.

    A rule is its position in its chain and its body, `canonical_rule` of the expression nft
    lists (the form the renderer derives from the same typed rule): a changed verdict, match
    or order is drift whatever its comment says; counters and comments are not compared.
    """
    if not text.strip():
        return None
    data = _json(text, "nft -j list table")
    if not isinstance(data, dict) or "nftables" not in data:
        raise ParseError("nft -j: no 'nftables' array")
    elements: set[tuple[str | int, ...]] = set()
    rule_index: dict[str, int] = {}
    found = False
    for obj in data["nftables"]:
        (kind, body), = obj.items()
        if kind == "metainfo":
            continue
        if body.get("family") != family or body.get("name" if kind == "table" else "table") != table:
            continue
        if kind == "table":
            found = True
        elif kind == "chain":
            elements.add(_chain_element(body))
        elif kind in ("map", "set"):
            flags = ",".join(sorted(body.get("flags", [])))
            key_type = body["type"] if isinstance(body["type"], str) else ".".join(body["type"])
            name = body["name"]
            elements.add((kind, name, key_type, str(body.get("map", "")), flags))
            for elem in body.get("elem", []):
                if isinstance(elem, list):
                    key, value = elem[0], elem[1]
                    # The tenant map's 16k entries: a plain address key, a jump verdict.
                    if isinstance(key, str) and isinstance(value, dict) and len(value) == 1 \
                            and "jump" in value and key[:1].isdigit():
                        elements.add(("elem", name, _nft_value(key),
                                      "jump " + value["jump"]["target"]))
                    else:
                        elements.add(("elem", name, _nft_value(key), _nft_value(value)))
                else:
                    elements.add(("elem", name, _nft_value(elem), ""))
        elif kind == "rule":
            chain = body["chain"]
            idx = rule_index.get(chain, 0)
            rule_index[chain] = idx + 1
            elements.add(("rule", chain, idx, canonical_rule(body.get("expr"))))
        else:  # counters, quotas, flowtables, ct helpers...: we never make them, so any is drift
            elements.add(("object", kind, str(body.get("name", ""))))
    if not found:
        return None
    return firewall_from_elements(elements, family=family, table=table)


def _chain_element(body: dict[str, Any]) -> tuple[str | int, ...]:
    if "hook" in body:
        return ("chain", body["name"], body.get("type", ""), body["hook"], int(body.get("prio", 0)),
                body.get("policy", "accept"))
    return ("chain", body["name"])
