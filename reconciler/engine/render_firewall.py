"""Render, the firewall (pure): the tenants' sources and service profiles -> the typed
`inet tunnelctl` table (reconciler.engine.nftables values, no text templating).

Tenants' own addresses go into hash maps (`tenant_hosts`, `tenant_hosts6`), their LANs into
interval maps (`tenant_profiles`, `tenant_profiles6`), each jumping to one chain per service
profile; the chains say what reaches the cloud address and the routed ranges, and the final
drops name no family. The last two typed tables are remembered by fingerprint, so patching a
render (render_patch) replaces only their elements.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from reconciler.engine.hoststate import (
    FIREWALL_FAMILY,
    FIREWALL_TABLE,
    TENANT_HOSTS,
    TENANT_HOSTS6,
    TENANT_MAP,
    TENANT_MAP6,
    Firewall,
)
from reconciler.engine.nftables import (
    ECHO_REQUEST,
    ICMP_ERRORS,
    Chain,
    Counter,
    CtDirection,
    CtState,
    DaddrInSet,
    DaddrIs,
    DportIn,
    Hook,
    IcmpType,
    IfMatch,
    NftValueError,
    Rule,
    SaddrVmap,
    Table,
    Verdict,
    port_ranges,
)
from reconciler.engine.parsers import firewall_from_elements
from reconciler.engine.render_tenant import RenderError, TenantParts, tenant_parts, v4_cidr
from reconciler.repo.model import Gateway, PortRange, Tunnel


@dataclass(frozen=True)
class ServiceProfile:
    chain: str
    services: tuple[str, ...]
    ports: tuple[tuple[str, tuple[tuple[int, int], ...]], ...]  # (proto, ((first, last), ...))


def _merge_ports(ranges: Iterable[PortRange]) -> tuple[tuple[int, int], ...]:
    """Overlapping or adjacent ranges merged: nft rejects overlapping intervals in one set."""
    return port_ranges((r.first, r.last) for r in ranges)


def profile_chain(services: Sequence[str]) -> str:
    # Service names never contain "_", so joining with it is unambiguous; nft names max 256.
    name = "svc_" + "_".join(services)
    return name if len(name) <= 200 else "svc_h" + hashlib.sha256(name.encode()).hexdigest()[:16]


def _profile(gateway: Gateway, services: tuple[str, ...]) -> ServiceProfile:
    by_proto: dict[str, list[PortRange]] = {}
    for name in services:
        svc = gateway.services[name]
        by_proto.setdefault(svc.proto, []).extend(svc.ports)
    ports = tuple((proto, _merge_ports(rs)) for proto, rs in sorted(by_proto.items()))
    return ServiceProfile(profile_chain(services), services, ports)


def render_firewall(gateway: Gateway, tunnels: Sequence[Tunnel], interface: str,
                    used: dict[int, TenantParts] | None = None) -> Firewall:
    table = firewall_table(gateway, tunnels, interface, used)
    structure = set(table.structure())
    structure.update(table.element_items())
    fw = firewall_from_elements(structure, family=FIREWALL_FAMILY, table=FIREWALL_TABLE)
    remember_table(fw.fingerprint, table)
    return Firewall(fw.family, fw.table, fw.fingerprint, fw.elements, table.text(fw.fingerprint))


def remember_table(fingerprint: str, table: Table) -> None:
    _tables.pop(fingerprint, None)
    if len(_tables) >= 2:  # the last render's (and the one before): each holds 21.8k tuples
        _tables.pop(next(iter(_tables)))
    _tables[fingerprint] = table


def firewall_table(gateway: Gateway, tunnels: Sequence[Tunnel], interface: str,
                   used: dict[int, TenantParts] | None = None) -> Table:
    """The typed table (see reconciler.engine.nftables); render_firewall's source."""
    profiles: dict[tuple[str, ...], ServiceProfile] = {}
    keyed: list[tuple[int, int, str]] = []  # LANs: (network as int, prefix length, chain)
    hosts: list[tuple[int, str]] = []  # /32 sources: (address as int, chain)
    keyed6: list[tuple[int, int, str]] = []  # the same for IPv6 (a dual-stack gateway only)
    hosts6: list[tuple[int, str]] = []
    dual = gateway.dual_stack
    used = {} if used is None else used
    for t in tunnels:
        part = tenant_parts(gateway, t, interface, used)
        if not part.services:
            continue  # no map entry: only ping reaches the cloud, everything else drops
        prof = profiles.get(part.services)
        if prof is None:
            prof = profiles[part.services] = _profile(gateway, part.services)
        for v, n in part.sources:
            if n == 32:
                hosts.append((v, prof.chain))
            else:
                keyed.append((v, n, prof.chain))
        if dual:
            for v, n in part.sources6:
                if n == 128:
                    hosts6.append((v, prof.chain))
                else:
                    keyed6.append((v, n, prof.chain))
    keyed.sort(key=lambda e: (e[0], e[1]))  # cidr_sort_key order of the prefixes
    hosts.sort()
    check_disjoint(keyed, hosts)
    routed = tuple(ipaddress.collapse_addresses(gateway.routed_ranges))
    ordered = tuple(sorted(profiles.values(), key=lambda p: p.chain))
    try:
        if not dual:
            chains = _chains(interface, gateway.address.ip, ordered, bool(routed))
            return Table(FIREWALL_FAMILY, FIREWALL_TABLE, interface, TENANT_MAP, keyed,
                         ROUTED_SET, routed, chains, TENANT_HOSTS, hosts)
        assert gateway.address6 is not None
        keyed6.sort()
        hosts6.sort()
        check_disjoint(keyed6, hosts6, 128)
        routed6 = tuple(ipaddress.collapse_addresses(gateway.routed_ranges6))
        chains = _chains(interface, gateway.address.ip, ordered, bool(routed),
                         gateway.address6.ip, bool(routed6))
        return Table(FIREWALL_FAMILY, FIREWALL_TABLE, interface, TENANT_MAP, keyed, ROUTED_SET,
                     routed, chains, TENANT_HOSTS, hosts, TENANT_HOSTS6, hosts6, TENANT_MAP6,
                     keyed6, ROUTED_SET6, routed6)
    except NftValueError as exc:
        raise RenderError(f"gateway {gateway.name}: {exc}") from None


def check_disjoint(intervals: Sequence[tuple[int, int, str]],
                    hosts: Sequence[tuple[int, str]], bits: int = 32) -> None:
    """No source may be in both maps, nor in two elements of one: with one interval map nft
    refused such a table, and the split must not turn that into a first-match-wins rule.
    The crossfile rules already refuse overlapping tunnel claims; this keeps render exact.
    `bits` 128: the IPv6 maps, the same check."""
    cidr = v4_cidr if bits == 32 else v6_cidr
    starts = [v for v, _, _ in intervals]
    end = -1
    for v, n, _ in intervals:
        if v <= end:
            raise RenderError(f"tenant sources overlap at {cidr(v, n)}")
        end = v + (1 << (bits - n)) - 1
    last = -1
    for v, _ in hosts:
        if v == last:
            raise RenderError(f"tenant source {cidr(v, bits)} is claimed twice")
        last = v
        i = bisect.bisect_right(starts, v) - 1
        if i >= 0:
            lo, n, _ = intervals[i]
            if v <= lo + (1 << (bits - n)) - 1:
                raise RenderError(f"tenant source {cidr(v, bits)} lies in the LAN "
                                  f"{cidr(lo, n)} of another tenant")


def v6_cidr(value: int, length: int) -> str:
    return f"{ipaddress.IPv6Address(value)}/{length}"


ROUTED_SET = "routed_ranges"
ROUTED_SET6 = "routed_ranges6"


@lru_cache(maxsize=8)
def _chains(interface: str, address: ipaddress.IPv4Address,
            profiles: tuple[ServiceProfile, ...], routed: bool,
            address6: ipaddress.IPv6Address | None = None,
            routed6: bool = False) -> tuple[Chain, ...]:
    """The table's chains, typed. `accept` only ends the current base chain; `drop` is final.

    input: traffic from the tenant interface may reach only the cloud tunnel address, on the
    services of the tenant it comes from (the map looks up its source address); all else from
    it drops; other interfaces are left to other tables. forward: nothing through the tenant
    interface (no tenant <-> tenant, tenant <-> infrastructure, host network -> tenant),
    except to the gateway's routed ranges on the tenant's services.

    With `address6` (a dual-stack gateway) the same for IPv6: ping and the tenant's services
    to address6 by the IPv6 maps, forwarding to routed_ranges6; the service chains are the
    same for both families (a port match is family-free). The final drops name no family,
    so in the inet table they drop IPv6 as well: without address6 every IPv6 packet from
    a tenant drops.
    """
    accept, drop = Verdict("accept"), Verdict("drop")
    iif_in, oif_out = IfMatch("iifname", "==", interface), IfMatch("oifname", "==", interface)
    # Established only for replies: a connection a tenant opened is judged packet by packet,
    # so one opened while the table was missing, or to a service since removed, stops.
    reply, est = CtDirection("reply"), CtState(("established", "related"))
    # An ICMP error a tenant's router sends about a packet we sent it (Packet Too Big, frag
    # needed, unreachable) travels in the connection's original direction: without this the
    # final drop takes it and path MTU discovery black-holes a customer LAN with a smaller MTU.
    # `related` is set only for an error that quotes an existing connection.
    related = CtState(("related",))
    errors = [IcmpType(ICMP_ERRORS["ip"])] + (
        [IcmpType(ICMP_ERRORS["ip6"], "ip6")] if address6 is not None else [])
    svc = tuple(Chain(p.chain, tuple(
        Rule((DportIn(_proto(proto), ports), accept), "services: " + ", ".join(p.services))
        for proto, ports in p.ports)) for p in profiles)
    inp = Chain("input", (
        Rule((IfMatch("iifname", "!=", interface), accept), "not from tenants: other tables"),
        Rule((reply, est, accept), "replies"),
        *(Rule((e, related, accept), "icmp errors about our replies") for e in errors),
        Rule((DaddrIs(address), IcmpType(ECHO_REQUEST), accept), "ping the cloud address"),
        Rule((DaddrIs(address), SaddrVmap(TENANT_HOSTS)), "tenant services by source address"),
        Rule((DaddrIs(address), SaddrVmap(TENANT_MAP)), "tenant services by source lan"),
        *_input6(address6),
        Rule((Counter(), drop), "tenant isolation: drop the rest"),
    ), Hook("input", -5, "accept"))
    fwd: list[Rule] = []
    if routed or routed6:
        fwd += [Rule((oif_out, reply, est, accept), "replies from routed ranges"),
                *(Rule((iif_in, e, related, accept), "icmp errors about routed replies")
                  for e in errors)]
    if routed:
        fwd += [Rule((iif_in, DaddrInSet(ROUTED_SET), SaddrVmap(TENANT_HOSTS)),
                     "routed ranges: tenant services by source address"),
                Rule((iif_in, DaddrInSet(ROUTED_SET), SaddrVmap(TENANT_MAP)),
                     "routed ranges: tenant services by source lan")]
    if routed6:
        fwd += [Rule((iif_in, DaddrInSet(ROUTED_SET6, "ip6"), SaddrVmap(TENANT_HOSTS6, "ip6")),
                     "routed ipv6 ranges: tenant services by source address"),
                Rule((iif_in, DaddrInSet(ROUTED_SET6, "ip6"), SaddrVmap(TENANT_MAP6, "ip6")),
                     "routed ipv6 ranges: tenant services by source lan")]
    fwd += [Rule((iif_in, Counter(), drop), "no forwarding from tenants"),
            Rule((oif_out, Counter(), drop), "no forwarding to tenants")]
    return (*svc, inp, Chain("forward", tuple(fwd), Hook("forward", -5, "accept")))


def _input6(address6: ipaddress.IPv6Address | None) -> tuple[Rule, ...]:
    """The input rules for IPv6 to the cloud's address6; none on an IPv4-only gateway."""
    if address6 is None:
        return ()
    return (Rule((DaddrIs(address6), IcmpType(ECHO_REQUEST, "ip6"), Verdict("accept")),
                 "ping the cloud ipv6 address"),
            Rule((DaddrIs(address6), SaddrVmap(TENANT_HOSTS6, "ip6")),
                 "tenant services by source ipv6 address"),
            Rule((DaddrIs(address6), SaddrVmap(TENANT_MAP6, "ip6")),
                 "tenant services by source ipv6 lan"))


def _proto(proto: str) -> Literal["udp", "tcp"]:
    if proto not in ("udp", "tcp"):
        raise NftValueError(f"protocol {proto!r}")
    return "udp" if proto == "udp" else "tcp"


def last_table_of(fw: Firewall, gateway: Gateway, ifname: str) -> Table:
    """The typed table of the last render (its chains and declarations; elements replaced)."""
    table = _tables.get(fw.fingerprint)
    if table is None:
        raise RenderError("internal: the last table is not remembered")
    return table


_tables: dict[str, Table] = {}  # fingerprint -> typed table, the last few renders
