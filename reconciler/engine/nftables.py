"""Our nftables table as typed values (pure). The statements, rules and chains it holds, and the
checks every value passes before it reaches nft, are in `reconciler.engine.nft_statements`;
every name there is importable from here too.

One table renders three ways from the same values:
- `Table.text()`: the `nft -f` program (what apply loads; measured faster than JSON, see
  `transaction_json` below);
- `Table.transaction_json()`: the same transaction as `nft -j -f` input;
- `Table.structure()`: the canonical elements observe compares against. A rule is
  ("rule", chain, index, body) where body is `canonical_rule(expr)` of the JSON expression
  nft lists for it, so a rule whose verdict, match or position changed differs even when
  its comment is unchanged. Counter values, handles and comments are not part of a body.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.engine.nft_statements import (
    CHAIN_RE,
    COMMENT_RE,
    ECHO_REQUEST,
    ICMP_ERRORS,
    IFNAME_RE,
    SET_RE,
    Chain,
    Counter,
    CtDirection,
    CtState,
    DaddrInSet,
    DaddrIs,
    DportIn,
    Element,
    Family,
    Hook,
    IcmpType,
    IfMatch,
    NftValueError,
    Rule,
    SaddrVmap,
    Statement,
    Verdict,
    canonical_rule,
    chain_name,
    check_pattern,
    ifname,
    port_ranges,
    set_name,
)

__all__ = [
    "CHAIN_RE", "COMMENT_RE", "ECHO_REQUEST", "FINGERPRINT_RE", "ICMP_ERRORS", "IFNAME_RE",
    "SET_RE", "Chain", "Counter", "CtDirection", "CtState", "DaddrInSet", "DaddrIs", "DportIn",
    "Element", "Family", "Hook", "IcmpType", "IfMatch", "NftValueError", "Rule", "SaddrVmap",
    "Statement", "Table", "Verdict", "canonical_rule", "chain_name", "check_pattern", "ifname",
    "port_ranges", "set_name",
]

FINGERPRINT_RE = re.compile(r"[0-9a-f]{1,64}")


def _v4(value: int, length: int) -> str:
    """(network as int, prefix length) -> 'a.b.c.d/len', checked; host bits must be clear."""
    if not (type(value) is int and type(length) is int and 0 <= length <= 32
            and 0 <= value <= 0xFFFFFFFF and value & ((1 << (32 - length)) - 1) == 0):
        raise NftValueError(f"({value!r}, {length!r}) is not an IPv4 prefix")
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}/{length}"


@functools.lru_cache(maxsize=1 << 16, typed=True)  # typed: True is not 1
def _v6(value: int, length: int) -> str:
    """(network as int, prefix length) -> 'fd00:1::/64', checked; host bits must be clear.
    The compressed text ipaddress prints, which is also how nft lists an IPv6 element.
    Remembered (sized like the parsers' caches): ipaddress formats one in ~3 us, and the
    same 21k prefixes of a 16k dual-stack table are printed twice per render."""
    if not (type(value) is int and type(length) is int and 0 <= length <= 128
            and 0 <= value < 1 << 128 and value & ((1 << (128 - length)) - 1) == 0):
        raise NftValueError(f"({value!r}, {length!r}) is not an IPv6 prefix")
    return f"{ipaddress.IPv6Address(value)}/{length}"


# ------------------------------------------------------------------------------- table


@dataclass(frozen=True)
class Table:
    """The whole table. `elements` are the tenant interval map's (network int, prefix len,
    chain), sorted by address; `routed` the forwardable cloud ranges. With `host_map`, the
    tenants' own /32 addresses are `hosts` (address int, chain) in that plain hash map and
    only LANs are in the interval map: nft 1.0.6 reads every element of every interval set
    in the table before any element operation, so 16k /32s there made every one-tenant
    change and every removal pay for all of them.

    On a dual-stack gateway the same two maps exist for IPv6 (`host_map6`: tenants' own /128s
    as `hosts6`, `tenant_map6`: IPv6 LANs as `elements6`, ints as for IPv4) and `routed6` in
    `routed_set6`. Without them (tenant_map6 "") the table is the IPv4 one, byte for byte."""

    family: str
    name: str
    interface: str
    tenant_map: str
    elements: Sequence[tuple[int, int, str]]
    routed_set: str
    routed: tuple[ipaddress.IPv4Network, ...]
    chains: tuple[Chain, ...]
    host_map: str = ""  # "" = no hash map (the fail-closed boot table)
    hosts: Sequence[tuple[int, str]] = ()
    host_map6: str = ""  # "" = IPv4 only; else both IPv6 maps are declared
    hosts6: Sequence[tuple[int, str]] = ()
    tenant_map6: str = ""
    elements6: Sequence[tuple[int, int, str]] = ()
    routed_set6: str = ""
    routed6: tuple[ipaddress.IPv6Network, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in ("inet", "ip"):
            raise NftValueError(f"{self.family!r} is not a table family we render")
        set_name(self.name)
        set_name(self.tenant_map)
        set_name(self.routed_set)
        if self.host_map:
            set_name(self.host_map)
        elif self.hosts:
            raise NftValueError("host elements need a host map")
        ifname(self.interface)
        if any(not isinstance(n, ipaddress.IPv4Network) for n in self.routed):
            raise NftValueError(f"routed ranges must be IPv4 networks: {self.routed!r}")
        self._check_v6()
        known = {c.name for c in self.chains}
        if any(c not in known for c in {e[2] for e in self.elements}
               | {h[1] for h in self.hosts} | {e[2] for e in self.elements6}
               | {h[1] for h in self.hosts6}):
            raise NftValueError("a tenant map element jumps to a chain the table lacks")

    def _check_v6(self) -> None:
        if bool(self.host_map6) != bool(self.tenant_map6):
            raise NftValueError("the two IPv6 tenant maps come together or not at all")
        if self.tenant_map6:
            set_name(self.host_map6)
            set_name(self.tenant_map6)
        elif self.hosts6 or self.elements6 or self.routed6:
            raise NftValueError("IPv6 elements need the IPv6 maps")
        if self.routed6:
            set_name(self.routed_set6)
        if any(not isinstance(n, ipaddress.IPv6Network) for n in self.routed6):
            raise NftValueError(f"IPv6 routed ranges must be IPv6 networks: {self.routed6!r}")

    # ---- canonical elements (what observe compares)

    def structure(self) -> frozenset[Element]:
        """Chains, rules and declarations; not the map and set elements."""
        v6 = ((self.host_map6, self.tenant_map6, self.routed_set6 if self.routed6 else None)
              if self.tenant_map6 else None)
        return _structure(self.chains, self.tenant_map, self.routed_set if self.routed else None,
                          self.host_map or None, v6)

    def element_items(self) -> list[Element]:
        items: list[Element] = [("elem", self.tenant_map, _v4(v, n), "jump " + c)
                                for v, n, c in self.elements]
        if self.hosts:
            items += [("elem", self.host_map, _v4(v, 32), "jump " + c) for v, c in self.hosts]
        items += [("elem", self.routed_set, str(n), "") for n in self.routed]
        if self.tenant_map6:
            items += [("elem", self.host_map6, _v6(v, 128), "jump " + c) for v, c in self.hosts6]
            items += [("elem", self.tenant_map6, _v6(v, n), "jump " + c)
                      for v, n, c in self.elements6]
            items += [("elem", self.routed_set6, str(n), "") for n in self.routed6]
        return items

    # ---- nft -f text

    def text(self, fingerprint: str) -> str:
        check_pattern(FINGERPRINT_RE, fingerprint, "fingerprint")
        out = [f"table {self.family} {self.name} {{",
               (f'\tcomment "managed by tunnelctl for {self.interface}; edits are reverted; '
                f'fp {fingerprint}"'), ""]
        if self.host_map:
            out += _host_map_text(self.host_map, "ipv4_addr", self.hosts, _v4, 32) + [""]
        out += _family_maps_text(self.tenant_map, "ipv4_addr", self.elements, _v4,
                                 self.routed_set, self.routed)
        if self.tenant_map6:
            out += ["", *_host_map_text(self.host_map6, "ipv6_addr", self.hosts6, _v6, 128), ""]
            out += _family_maps_text(self.tenant_map6, "ipv6_addr", self.elements6, _v6,
                                     self.routed_set6, self.routed6)
        for c in self.chains:
            out += ["", f"\tchain {c.name} {{"]
            if c.hook is not None:
                h = c.hook
                out.append(f"\t\ttype filter hook {h.hook} priority {h.priority}; "
                           f"policy {h.policy};")
            out += [f"\t\t{r.text()}" for r in c.rules]
            out.append("\t}")
        out.append("}")
        return "\n".join(out) + "\n"

    # ---- nft -j -f JSON

    def transaction_json(self, fingerprint: str) -> str:
        """The same replace-the-table transaction as apply's text one, as `nft -j -f -`
        input: declare (so delete cannot fail), delete, define again."""
        check_pattern(FINGERPRINT_RE, fingerprint, "fingerprint")
        ident = {"family": self.family, "name": self.name}
        base = {"family": self.family, "table": self.name}
        cmds: list[dict[str, Any]] = [
            {"add": {"table": ident}}, {"delete": {"table": ident}},
            {"add": {"table": {**ident, "comment": f"managed by tunnelctl for {self.interface}; "
                               f"edits are reverted; fp {fingerprint}"}}}]
        for c in self.chains:
            chain: dict[str, Any] = {**base, "name": c.name}
            if c.hook is not None:
                chain.update(type="filter", hook=c.hook.hook, prio=c.hook.priority,
                             policy=c.hook.policy)
            cmds.append({"add": {"chain": chain}})
        if self.host_map:
            hmap: dict[str, Any] = {**base, "name": self.host_map, "type": "ipv4_addr",
                                    "map": "verdict"}
            if self.hosts:
                hmap["elem"] = [[_json_prefix(v, 32), {"jump": {"target": c}}]
                                for v, c in self.hosts]
            cmds.append({"add": {"map": hmap}})
        tmap: dict[str, Any] = {**base, "name": self.tenant_map, "type": "ipv4_addr",
                                "map": "verdict", "flags": ["interval"]}
        if self.elements:
            tmap["elem"] = [[_json_prefix(v, n), {"jump": {"target": c}}]
                            for v, n, c in self.elements]
        cmds.append({"add": {"map": tmap}})
        if self.routed:
            cmds.append({"add": {"set": {**base, "name": self.routed_set, "type": "ipv4_addr",
                                         "flags": ["interval"],
                                         "elem": [_json_prefix(int(n.network_address),
                                                               n.prefixlen)
                                                  for n in self.routed]}}})
        if self.tenant_map6:
            cmds += self._json6(base)
        for c in self.chains:
            cmds += [{"add": {"rule": {**base, "chain": c.name, "expr": r.expr(),
                                       **({"comment": r.comment} if r.comment else {})}}}
                     for r in c.rules]
        return json.dumps({"nftables": cmds}, separators=(",", ":"))

    def _json6(self, base: dict[str, str]) -> list[dict[str, Any]]:
        hmap: dict[str, Any] = {**base, "name": self.host_map6, "type": "ipv6_addr",
                                "map": "verdict"}
        if self.hosts6:
            hmap["elem"] = [[_json_prefix6(v, 128), {"jump": {"target": c}}]
                            for v, c in self.hosts6]
        tmap: dict[str, Any] = {**base, "name": self.tenant_map6, "type": "ipv6_addr",
                                "map": "verdict", "flags": ["interval"]}
        if self.elements6:
            tmap["elem"] = [[_json_prefix6(v, n), {"jump": {"target": c}}]
                            for v, n, c in self.elements6]
        cmds: list[dict[str, Any]] = [{"add": {"map": hmap}}, {"add": {"map": tmap}}]
        if self.routed6:
            cmds.append({"add": {"set": {**base, "name": self.routed_set6, "type": "ipv6_addr",
                                         "flags": ["interval"],
                                         "elem": [_json_prefix6(int(n.network_address),
                                                                n.prefixlen)
                                                  for n in self.routed6]}}})
        return cmds


def _host_map_text(name: str, addr_type: str, hosts: Sequence[tuple[int, str]],
                   fmt: Callable[[int, int], str], bits: int) -> list[str]:
    """A tenant host map (plain addresses, no prefix length) in `nft -f` text."""
    out = [f"\tmap {name} {{", f"\t\ttype {addr_type} : verdict"]
    if hosts:
        cut = len(str(bits)) + 1  # "/32" or "/128"
        body = ",\n".join(f"\t\t\t{fmt(v, bits)[:-cut]} : jump {c}" for v, c in hosts)
        out += ["\t\telements = {", body, "\t\t}"]
    return [*out, "\t}"]


def _family_maps_text(name: str, addr_type: str, elements: Sequence[tuple[int, int, str]],
                      fmt: Callable[[int, int], str], routed_set: str,
                      routed: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
                      ) -> list[str]:
    """A tenant interval map and, when there are routed ranges, their set, in `nft -f` text."""
    out = [f"\tmap {name} {{", f"\t\ttype {addr_type} : verdict", "\t\tflags interval"]
    if elements:
        # The 16k-line hot loop: checked ints, chain names checked in __post_init__.
        body = ",\n".join(f"\t\t\t{fmt(v, n)} : jump {c}" for v, n, c in elements)
        out += ["\t\telements = {", body, "\t\t}"]
    out.append("\t}")
    if routed:
        nets = ", ".join(str(n) for n in routed)
        out += ["", f"\tset {routed_set} {{", f"\t\ttype {addr_type}", "\t\tflags interval",
                f"\t\telements = {{ {nets} }}", "\t}"]
    return out


@functools.lru_cache(maxsize=8)
def _structure(chains: tuple[Chain, ...], tenant_map: str,
               routed_set: str | None, host_map: str | None = None,
               v6: tuple[str, str, str | None] | None = None) -> frozenset[Element]:
    # Once per distinct set of chains: 16k tenants only ever add map elements, never a
    # chain, rule or declaration, so a render does not rebuild the rule bodies.
    out: set[Element] = {("map", tenant_map, "ipv4_addr", "verdict", "interval")}
    if host_map is not None:
        out.add(("map", host_map, "ipv4_addr", "verdict", ""))
    if routed_set is not None:
        out.add(("set", routed_set, "ipv4_addr", "", "interval"))
    if v6 is not None:  # (host map, interval map, routed set or None)
        out.add(("map", v6[0], "ipv6_addr", "verdict", ""))
        out.add(("map", v6[1], "ipv6_addr", "verdict", "interval"))
        if v6[2] is not None:
            out.add(("set", v6[2], "ipv6_addr", "", "interval"))
    for c in chains:
        out.add(c.element())
        out.update(("rule", c.name, i, r.body()) for i, r in enumerate(c.rules))
    return frozenset(out)


def _json_prefix(value: int, length: int) -> Any:
    addr = _v4(value, length).partition("/")[0]
    return addr if length == 32 else {"prefix": {"addr": addr, "len": length}}


def _json_prefix6(value: int, length: int) -> Any:
    addr = _v6(value, length).partition("/")[0]
    return addr if length == 128 else {"prefix": {"addr": addr, "len": length}}
