"""Render stage (pure): repo models -> the host's desired state.

For one gateway and its active tunnels: the interface, one peer per tunnel (PSK derived by
HKDF from the host secret and the tunnel identity + rotation), routes for customer LANs,
the nftables table (typed values of reconciler.engine.nftables, no text templating) and
the interface config file (templates/wg-interface.conf.j2). Secrets come back separately in
`Secrets`; the state only carries digests. Reading the key files is the caller's job, so this
module does no I/O beyond loading its templates.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import jinja2

from reconciler.engine.hoststate import (
    FIREWALL_FAMILY,
    FIREWALL_TABLE,
    TENANT_HOSTS,
    TENANT_HOSTS6,
    TENANT_MAP,
    TENANT_MAP6,
    ConfigFile,
    Firewall,
    HostState,
    InterfaceConfig,
    Peer,
    Route,
    Secrets,
)
from reconciler.engine.nftables import (
    Chain,
    Counter,
    CtDirection,
    CtState,
    DaddrInSet,
    DaddrIs,
    DportIn,
    Hook,
    IcmpEchoRequest,
    IcmpErrorType,
    IfMatch,
    NftValueError,
    Rule,
    SaddrVmap,
    Table,
    Verdict,
    port_ranges,
)
from reconciler.engine.parsers import firewall_from_elements
from reconciler.engine.psk import psk_deriver, psk_digest
from reconciler.engine.templates import template_dir
from reconciler.engine.wgkeys import public_key
from reconciler.repo.model import AmneziaWG, Gateway, PortRange, Tunnel, TunnelStatus

CONFIG_TEMPLATE = "wg-interface.conf.j2"


class RenderError(ValueError):
    """The repo asks for something the host cannot express (names the tunnel)."""


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # nft and wg-quick syntax, not HTML
        keep_trailing_newline=True,
    )
    return env


# ------------------------------------------------------------------------------- peers


def _v4_cidr(value: int, length: int) -> str:
    # str() of an ipaddress object re-formats it on every call; this is the same text, cheaper.
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}/{length}"


def tunnel_allowed_ips(tunnel: Tunnel) -> tuple[str, ...]:
    """The customer's /32 plus its LANs: what cryptokey routing accepts from this peer.

    The canonical_ips form (deduplicated, sorted by address then prefix length), built from
    the model's IPv4 objects, which are already normalised, instead of from text.
    """
    nets = {(int(tunnel.customer_address), 32)}
    nets.update((int(n.network_address), n.prefixlen) for n in tunnel.lans)
    v4 = tuple(_v4_cidr(v, n) for v, n in sorted(nets))
    if tunnel.subnet6 is None and not tunnel.lans6:
        return v4  # IPv4-only: the path every tunnel of a v4 gateway takes
    return v4 + _v6_allowed_ips(tunnel)


def _v6_allowed_ips(tunnel: Tunnel) -> tuple[str, ...]:
    """The customer's /128 and its IPv6 LANs, after every IPv4 entry in canonical_ips order
    (hoststate.cidr_sort_key: version, then address, then prefix length)."""
    nets: set[ipaddress.IPv6Network] = set(tunnel.lans6)
    if tunnel.customer_address6 is not None:
        nets.add(ipaddress.IPv6Network((tunnel.customer_address6, 128)))
    return tuple(str(n) for n in sorted(nets, key=lambda n: (int(n.network_address),
                                                             n.prefixlen)))


def active_tunnels(gateway: Gateway, tunnels: Iterable[Tunnel]) -> list[Tunnel]:
    return sorted((t for t in tunnels if t.gateway == gateway.name
                   and t.status is TunnelStatus.active), key=lambda t: t.ident)


def render_peers(tunnels: Sequence[Tunnel], host_secret: bytes) -> tuple[dict[str, Peer],
                                                                          dict[str, str]]:
    global _peer_memo
    memo, used = _peer_memo, {}
    peers: dict[str, Peer] = {}
    psks: dict[str, str] = {}
    derive = None
    for t in tunnels:
        if t.public_key in peers:
            raise RenderError(f"{t.ident}: public key already used by {peers[t.public_key].owner}")
        entry = memo.get(id(t))
        if entry is None or entry[0] is not t or entry[1] != host_secret:
            derive = derive or psk_deriver(host_secret)
            psk = derive(t.org, t.name, t.psk_rotation)
            entry = (t, host_secret, Peer(t.public_key, tunnel_allowed_ips(t), psk_digest(psk),
                                          t.cloud_keepalive, owner=t.ident), psk)
        used[id(t)] = entry
        peers[t.public_key] = entry[2]
        psks[t.public_key] = entry[3]
    _peer_memo = used  # forget tunnels no longer rendered
    return peers, psks


# Peers rendered last time, by the identity of their tunnel model. Loading keeps the model
# object of an unchanged file (its parse is cached by blob id) and models are frozen, so the
# very same object renders to the same peer: a cycle after a one-file commit derives one PSK,
# not 16k. Entries hold their model, so an id cannot be reused while it is a key here; the
# PSKs are those the cycle holds in Secrets anyway.
_peer_memo: dict[int, tuple[Tunnel, bytes, Peer, str]] = {}


# ------------------------------------------------------------------------------ routes


def render_routes(gateway: Gateway, tunnels: Sequence[Tunnel], interface: str,
                  used: dict[int, _TenantParts] | None = None) -> frozenset[Route]:
    """LAN routes via the interface. A customer /32 is routed only when the interface's own
    prefix (the on-link route of e.g. 10.20.0.1/16) does not already cover it."""
    routes: set[Route] = set()
    used = {} if used is None else used
    for t in tunnels:
        routes.update(_tenant(gateway, t, interface, used).routes)
    return frozenset(routes)


def _tenant_routes(gateway: Gateway, t: Tunnel, interface: str,
                   host: ipaddress.IPv4Address | None = None) -> tuple[Route, ...]:
    host = host if host is not None else t.customer_address
    out = [Route(_v4_cidr(int(lan.network_address), lan.prefixlen), interface) for lan in t.lans]
    if host not in gateway.address.network:
        out.append(Route(f"{host}/32", interface))
    if t.subnet6 is not None or t.lans6:
        out += _tenant_routes6(gateway, t, interface)
    return tuple(out)


def _tenant_routes6(gateway: Gateway, t: Tunnel, interface: str) -> list[Route]:
    """IPv6 LAN routes, and the customer's /128 when address6's on-link prefix does not
    already cover it (the same rule as the /32). str() of an IPv6Network is the compressed
    form `ip -json route` prints and canonical_cidr gives back, so observe compares equal."""
    out = [Route(str(lan), interface) for lan in t.lans6]
    host6 = t.customer_address6
    if host6 is not None and (gateway.address6 is None or host6 not in gateway.address6.network):
        out.append(Route(f"{host6}/128", interface))
    return out


@dataclass(frozen=True)
class _TenantParts:
    """What one tunnel contributes to routes and the firewall, for one gateway+interface."""

    tunnel: Tunnel
    gateway: Gateway
    interface: str
    routes: tuple[Route, ...]
    services: tuple[str, ...]
    sources: tuple[tuple[int, int], ...]  # tenant-map keys: (network as int, prefix length)
    sources6: tuple[tuple[int, int], ...] = ()  # the IPv6 maps' keys (a dual-stack gateway)


def _tenant(gateway: Gateway, t: Tunnel, interface: str,
            used: dict[int, _TenantParts]) -> _TenantParts:
    """Memoised by the identity of the (frozen) tunnel model, like the peers: a cycle after a
    one-file commit recomputes one tenant, not 16k (see _peer_memo). Entries a render used
    are collected in `used`; render_host keeps those for the next render."""
    entry = used.get(id(t)) or _tenant_memo.get(id(t))
    if entry is not None and entry.tunnel is t and entry.gateway is gateway \
            and entry.interface == interface:
        used[id(t)] = entry
        return entry
    services = tunnel_services(gateway, t)
    address = t.customer_address
    host = int(address)
    sources: tuple[tuple[int, int], ...]
    if not t.lans:
        sources = ((host, 32),)
    elif len(t.lans) == 1 and address not in t.lans[0] and not (
            t.lans[0].prefixlen == 32 and int(t.lans[0].network_address) >> 1 == host >> 1):
        # One LAN that neither holds the host nor pairs with it into a /31: nothing to merge.
        lan = t.lans[0]
        sources = tuple(sorted([(host, 32), (int(lan.network_address), lan.prefixlen)]))
    else:  # nft refuses overlapping intervals: collapsed as collapse_addresses does
        nets = ipaddress.collapse_addresses([ipaddress.IPv4Network((host, 32)), *t.lans])
        sources = tuple((int(n.network_address), n.prefixlen) for n in nets)
    entry = _TenantParts(t, gateway, interface, _tenant_routes(gateway, t, interface, address),
                         services, sources, _sources6(gateway, t))
    used[id(t)] = entry
    return entry


def _sources6(gateway: Gateway, t: Tunnel) -> tuple[tuple[int, int], ...]:
    """The IPv6 map keys of a tenant: its /128 and its IPv6 LANs, collapsed (nft refuses
    overlapping intervals). None on an IPv4-only gateway, whose table drops every IPv6
    packet from tenants."""
    if not gateway.dual_stack or (t.subnet6 is None and not t.lans6):
        return ()
    host = t.customer_address6
    if not t.lans6 and host is not None:
        return ((int(host), 128),)  # the common case, without collapsing
    nets = list(t.lans6)
    if host is not None:
        nets.append(ipaddress.IPv6Network((host, 128)))
    return tuple((int(n.network_address), n.prefixlen)
                 for n in ipaddress.collapse_addresses(nets))


_tenant_memo: dict[int, _TenantParts] = {}


# ---------------------------------------------------------------------------- firewall


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


def tunnel_services(gateway: Gateway, tunnel: Tunnel) -> tuple[str, ...]:
    names = tunnel.services if tunnel.services is not None else gateway.default_services
    unknown = [n for n in names if n not in gateway.services]
    if unknown:
        raise RenderError(f"{tunnel.ident}: services {unknown} are not in gateway "
                          f"{gateway.name}'s catalog {sorted(gateway.services)}")
    return tuple(sorted(set(names)))


def _profile(gateway: Gateway, services: tuple[str, ...]) -> ServiceProfile:
    by_proto: dict[str, list[PortRange]] = {}
    for name in services:
        svc = gateway.services[name]
        by_proto.setdefault(svc.proto, []).extend(svc.ports)
    ports = tuple((proto, _merge_ports(rs)) for proto, rs in sorted(by_proto.items()))
    return ServiceProfile(profile_chain(services), services, ports)


def render_firewall(gateway: Gateway, tunnels: Sequence[Tunnel], interface: str,
                    used: dict[int, _TenantParts] | None = None) -> Firewall:
    table = firewall_table(gateway, tunnels, interface, used)
    structure = set(table.structure())
    structure.update(table.element_items())
    fw = firewall_from_elements(structure, family=FIREWALL_FAMILY, table=FIREWALL_TABLE)
    _remember_table(fw.fingerprint, table)
    return Firewall(fw.family, fw.table, fw.fingerprint, fw.elements, table.text(fw.fingerprint))


def _remember_table(fingerprint: str, table: Table) -> None:
    _tables.pop(fingerprint, None)
    if len(_tables) >= 2:  # the last render's (and the one before): each holds 21.8k tuples
        _tables.pop(next(iter(_tables)))
    _tables[fingerprint] = table


def firewall_table(gateway: Gateway, tunnels: Sequence[Tunnel], interface: str,
                   used: dict[int, _TenantParts] | None = None) -> Table:
    """The typed table (see reconciler.engine.nftables); render_firewall's source."""
    profiles: dict[tuple[str, ...], ServiceProfile] = {}
    keyed: list[tuple[int, int, str]] = []  # LANs: (network as int, prefix length, chain)
    hosts: list[tuple[int, str]] = []  # /32 sources: (address as int, chain)
    keyed6: list[tuple[int, int, str]] = []  # the same for IPv6 (a dual-stack gateway only)
    hosts6: list[tuple[int, str]] = []
    dual = gateway.dual_stack
    used = {} if used is None else used
    for t in tunnels:
        part = _tenant(gateway, t, interface, used)
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
    _check_disjoint(keyed, hosts)
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
        _check_disjoint(keyed6, hosts6, 128)
        routed6 = tuple(ipaddress.collapse_addresses(gateway.routed_ranges6))
        chains = _chains(interface, gateway.address.ip, ordered, bool(routed),
                         gateway.address6.ip, bool(routed6))
        return Table(FIREWALL_FAMILY, FIREWALL_TABLE, interface, TENANT_MAP, keyed, ROUTED_SET,
                     routed, chains, TENANT_HOSTS, hosts, TENANT_HOSTS6, hosts6, TENANT_MAP6,
                     keyed6, ROUTED_SET6, routed6)
    except NftValueError as exc:
        raise RenderError(f"gateway {gateway.name}: {exc}") from None


def _check_disjoint(intervals: Sequence[tuple[int, int, str]],
                    hosts: Sequence[tuple[int, str]], bits: int = 32) -> None:
    """No source may be in both maps, nor in two elements of one: with one interval map nft
    refused such a table, and the split must not turn that into a first-match-wins rule.
    The crossfile rules already refuse overlapping tunnel claims; this keeps render exact.
    `bits` 128: the IPv6 maps, the same check."""
    cidr = _v4_cidr if bits == 32 else _v6_cidr
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


def _v6_cidr(value: int, length: int) -> str:
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
    errors = [IcmpErrorType("ip")] + ([IcmpErrorType("ip6")] if address6 is not None else [])
    svc = tuple(Chain(p.chain, tuple(
        Rule((DportIn(_proto(proto), ports), accept), "services: " + ", ".join(p.services))
        for proto, ports in p.ports)) for p in profiles)
    inp = Chain("input", (
        Rule((IfMatch("iifname", "!=", interface), accept), "not from tenants: other tables"),
        Rule((reply, est, accept), "replies"),
        *(Rule((e, related, accept), "icmp errors about our replies") for e in errors),
        Rule((DaddrIs(address), IcmpEchoRequest(), accept), "ping the cloud address"),
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
    return (Rule((DaddrIs(address6), IcmpEchoRequest("ip6"), Verdict("accept")),
                 "ping the cloud ipv6 address"),
            Rule((DaddrIs(address6), SaddrVmap(TENANT_HOSTS6, "ip6")),
                 "tenant services by source ipv6 address"),
            Rule((DaddrIs(address6), SaddrVmap(TENANT_MAP6, "ip6")),
                 "tenant services by source ipv6 lan"))


def _proto(proto: str) -> Literal["udp", "tcp"]:
    if proto not in ("udp", "tcp"):
        raise NftValueError(f"protocol {proto!r}")
    return "udp" if proto == "udp" else "tcp"


# ----------------------------------------------------------------- interface and config


def interface_address(gateway: Gateway) -> str:
    """InterfaceConfig.address: address, plus address6 on a dual-stack gateway, sorted as
    text and ","-joined, as parsers.parse_ip_addr reads them back (ULA text sorts after any
    dotted quad, so IPv4 comes first)."""
    if gateway.address6 is None:
        return str(gateway.address)
    return ",".join(sorted((str(gateway.address), str(gateway.address6))))


def render_config(interface: InterfaceConfig, peers: Mapping[str, Peer], secrets: Secrets,
                  amneziawg: AmneziaWG | None = None) -> str:
    """The wg-quick file text. Contains the private key and PSKs: write it 0600, never log it.

    With `amneziawg` it is an awg-quick file: the obfuscation keys under [Interface], printed
    from AmneziaWG.config_lines(), the source the customer configs print from too. Plain
    wg-quick refuses those keys, so a host without AmneziaWG fails loudly at boot instead of
    running unobfuscated.
    """
    ordered = sorted(peers.values(), key=lambda p: (p.owner or "", p.public_key))
    obfuscation = amneziawg.config_lines() if amneziawg is not None else ()
    template = _env().get_template(CONFIG_TEMPLATE)
    if len(ordered) >= SPLICE_MIN_PEERS and _splice_agrees(template):
        # The frame from the template, each peer's block by an f-string: 16k blocks cost
        # ~25 ms instead of ~0.17 s through jinja.
        frame = template.render(interface=interface, private_key=secrets.private_key,
                                peers=(), psks={}, obfuscation=obfuscation)
        return frame + "".join([_peer_block(p, secrets.psks.get(p.public_key))
                                for p in ordered])
    return template.render(
        interface=interface, private_key=secrets.private_key, peers=ordered, psks=secrets.psks,
        obfuscation=obfuscation)


SPLICE_MIN_PEERS = 64


def _peer_block(peer: Peer, psk: str | None) -> str:
    """One [Peer] block exactly as the template's peer loop renders it (checked against the
    template before first use, see _splice_agrees). Not memoised: an f-string per peer costs
    ~1.5 us, and 16k cached blocks would be ~6 MiB more peak memory for ~25 ms."""
    lines = ["[Peer]", f"# {peer.owner or 'unnamed'}", f"PublicKey = {peer.public_key}"]
    if psk:
        lines.append(f"PresharedKey = {psk}")
    lines.append(f"AllowedIPs = {', '.join(peer.allowed_ips)}")
    if peer.keepalive:
        lines.append(f"PersistentKeepalive = {peer.keepalive}")
    return "\n".join(lines) + "\n\n"


_splice_checked: dict[int, bool] = {}


def _splice_agrees(template: jinja2.Template) -> bool:
    """Whether frame + _peer_block gives the template's own text, tried once per loaded
    template on sample peers (with and without PSK, keepalive, owner, several IPs); when a
    template edit breaks that, every render goes through jinja as before."""
    key = id(template)
    ok = _splice_checked.get(key)
    if ok is None:
        samples = [Peer("A" * 43 + "=", ("10.20.0.6/32", "192.168.1.0/24"), "d", 25, owner="o/a"),
                   Peer("B" * 43 + "=", ("10.20.0.10/32",), None, 0),
                   Peer("D" * 43 + "=", ("10.20.0.14/32", "fd42:4242:1:3::2/128",
                                         "fd99:1::/48"), None, 0, owner="o/c")]
        psks = {samples[0].public_key: "C" * 43 + "="}
        iface = InterfaceConfig("wg9", 51821, None, "10.20.0.1/16,fd42:4242:1::1/48", 1420, True)
        whole = template.render(interface=iface, private_key="K", peers=samples, psks=psks,
                                obfuscation=())
        frame = template.render(interface=iface, private_key="K", peers=(), psks={},
                                obfuscation=())
        spliced = frame + "".join(_peer_block(p, psks.get(p.public_key)) for p in samples)
        ok = _splice_checked[key] = whole == spliced
    return ok


def render_host(gateway: Gateway, tunnels: Iterable[Tunnel], *, interface: str | None,
                private_key: str, host_secret: bytes,
                config_path: Path | None) -> tuple[HostState, Secrets]:
    """Everything the host should look like for `gateway`, plus the secrets to get there.

    A call with the same inputs as the previous one (the same tunnel model objects, as in a
    service cycle that enforces the state it applied) returns the previous result: the values
    are immutable, and a no-op cycle then costs no rendering at all.
    """
    global _last_host
    seq = tuple(tunnels)  # a copy: a list the caller mutates later must not look the same
    key = (gateway, interface, private_key, host_secret, config_path)
    last = _last_host
    if last is not None and _same_objects(last[1], seq) and last[0] == key:
        return last[2]
    patched = None
    if last is not None and last[0] == key and len(seq) >= PATCH_MIN:
        # The index of a whole render is built on the first patch that needs it: a CLI
        # apply renders once and never pays for it.
        index = last[3] if last[3] is not None else _Index.of(last[2], gateway, last[1])
        if index is not None:
            patched = _patched(index, last[1], seq, gateway, host_secret)
    if patched is not None:
        result = patched.result
    else:
        result = _render_host(gateway, seq, interface=interface, private_key=private_key,
                              host_secret=host_secret, config_path=config_path)
    _last_host = (key, seq, result, patched)
    return result


PATCH_MIN = 256  # below this a whole render is as cheap as patching
PATCH_MAX_CHANGED = 64  # changed tunnel models; more render whole


@dataclass
class _Index:
    """What the last render was made of, so a render of a few changed tunnel models patches
    it instead of rebuilding 16k peers, 5k routes and a 21.8k-element table (issue 13: a
    one-tenant change rendered in ~0.2 s). Counts make every removal exact: a route or a
    service profile goes only when no remaining tunnel still contributes it."""

    result: tuple[HostState, Secrets]
    routes: dict[Route, int]
    profiles: dict[tuple[str, ...], int]
    hosts: dict[int, str]  # tenant host map: address -> chain
    lans: dict[tuple[int, int], str]  # tenant interval map: (network, length) -> chain
    hosts6: dict[int, str]  # the IPv6 maps the same way (empty on an IPv4-only gateway)
    lans6: dict[tuple[int, int], str]

    @classmethod
    def of(cls, result: tuple[HostState, Secrets], gateway: Gateway,
           seq: Sequence[Tunnel]) -> _Index | None:
        state = result[0]
        if state.interface is None or state.firewall is None:
            return None
        ifname = state.interface.name
        routes: dict[Route, int] = {}
        profiles: dict[tuple[str, ...], int] = {}
        hosts: dict[int, str] = {}
        lans: dict[tuple[int, int], str] = {}
        hosts6: dict[int, str] = {}
        lans6: dict[tuple[int, int], str] = {}
        for t in seq:
            if not _is_active(gateway, t):
                continue
            part = _tenant(gateway, t, ifname, _tenant_memo)
            for r in part.routes:
                routes[r] = routes.get(r, 0) + 1
            if part.services:
                profiles[part.services] = profiles.get(part.services, 0) + 1
                chain = profile_chain(part.services)
                for v, n in part.sources:
                    if n == 32:
                        hosts[v] = chain
                    else:
                        lans[(v, n)] = chain
                for v, n in part.sources6:
                    if n == 128:
                        hosts6[v] = chain
                    else:
                        lans6[(v, n)] = chain
        return cls(result, routes, profiles, hosts, lans, hosts6, lans6)


def _is_active(gateway: Gateway, t: Tunnel) -> bool:
    return t.gateway == gateway.name and t.status is TunnelStatus.active


def _patched(index: _Index, old_seq: tuple[Tunnel, ...], seq: tuple[Tunnel, ...],
             gateway: Gateway, host_secret: bytes) -> _Index | None:
    """The last render with the changed tunnel models' contributions taken out and the new
    ones put in; None when a whole render is needed (many changes, a service profile that
    appears or goes, a clash the whole render reports with its own error)."""
    new_ids = set(map(id, seq))
    old_ids = set(map(id, old_seq))
    removed = [t for t in old_seq if id(t) not in new_ids]
    added = [t for t in seq if id(t) not in old_ids]
    if len(removed) + len(added) > PATCH_MAX_CHANGED or len(new_ids) != len(seq):
        return None
    rm = [t for t in removed if _is_active(gateway, t)]
    add = sorted((t for t in added if _is_active(gateway, t)), key=lambda t: t.ident)
    state, secrets = index.result
    assert state.interface is not None and state.firewall is not None
    ifname = state.interface.name
    peers = dict(state.peers)
    psks = dict(secrets.psks)
    routes = dict(index.routes)
    profiles = dict(index.profiles)
    hosts, lans = dict(index.hosts), dict(index.lans)
    hosts6, lans6 = dict(index.hosts6), dict(index.lans6)
    gone_items: set[tuple[str | int, ...]] = set()
    new_items: set[tuple[str | int, ...]] = set()
    swaps: list[tuple[Peer, str | None, Peer | None]] = []  # config blocks to replace
    for t in rm:
        part = _tenant_memo.get(id(t))
        if part is None or part.tunnel is not t or peers.get(t.public_key) is None:
            return None
        swaps.append((peers.pop(t.public_key), psks.pop(t.public_key, None), None))
        for r in part.routes:
            routes[r] -= 1
            if not routes[r]:
                del routes[r]
        if part.services:
            profiles[part.services] -= 1
            chain = profile_chain(part.services)
            for v, n in part.sources:
                gone_items.add(_source_item(v, n, chain))
                if (hosts.pop(v, None) if n == 32 else lans.pop((v, n), None)) != chain:
                    return None
            for v, n in part.sources6:
                gone_items.add(_source_item6(v, n, chain))
                if (hosts6.pop(v, None) if n == 128 else lans6.pop((v, n), None)) != chain:
                    return None
    new_parts: dict[int, _TenantParts] = {}
    for t in add:
        if t.public_key in peers:
            return None  # the whole render names the clash
        part = _tenant(gateway, t, ifname, new_parts)
        for r in part.routes:
            routes[r] = routes.get(r, 0) + 1
        if part.services:
            if not profiles.get(part.services):
                return None  # a new service profile: a new chain, the table's structure
            profiles[part.services] += 1
            chain = profile_chain(part.services)
            for v, n in part.sources:
                if v in hosts if n == 32 else (v, n) in lans:
                    return None
                if n == 32:
                    hosts[v] = chain
                else:
                    lans[(v, n)] = chain
                new_items.add(_source_item(v, n, chain))
            for v, n in part.sources6:
                if v in hosts6 if n == 128 else (v, n) in lans6:
                    return None
                if n == 128:
                    hosts6[v] = chain
                else:
                    lans6[(v, n)] = chain
                new_items.add(_source_item6(v, n, chain))
        peer, psk = _one_peer(t, host_secret)
        peers[t.public_key] = peer
        psks[t.public_key] = psk
    if any(c == 0 for c in profiles.values()):
        return None  # a service profile went: a chain goes
    # Render the table from the patched maps (exact text and checks), its elements patched.
    keyed = sorted((v, n, c) for (v, n), c in lans.items())
    host_list = sorted(hosts.items())
    _check_disjoint(keyed, host_list)
    old_fw = state.firewall
    last = _last_table_of(old_fw, gateway, ifname)
    if last.tenant_map6:
        keyed6 = sorted((v, n, c) for (v, n), c in lans6.items())
        host_list6 = sorted(hosts6.items())
        _check_disjoint(keyed6, host_list6, 128)
        table = dataclasses.replace(last, elements=keyed, hosts=host_list, elements6=keyed6,
                                    hosts6=host_list6)
    else:
        table = dataclasses.replace(last, elements=keyed, hosts=host_list)
    elements = (old_fw.elements - (gone_items - new_items)) | (new_items - gone_items)
    fw = firewall_from_elements(elements, family=old_fw.family, table=old_fw.table)
    _remember_table(fw.fingerprint, table)
    firewall = Firewall(fw.family, fw.table, fw.fingerprint, fw.elements,
                        table.text(fw.fingerprint))
    # Config: a changed peer's block replaced in place; anything else rendered again.
    config = state.config
    text = secrets.config_text
    if config is not None and text is not None:
        for old_peer, old_psk, _ in swaps:
            new_peer = peers.get(old_peer.public_key)
            block = _peer_block(old_peer, old_psk)
            if new_peer is None or new_peer.owner != old_peer.owner or text.count(block) != 1:
                text = None
                break
            text = text.replace(block, _peer_block(new_peer, psks.get(new_peer.public_key)))
        if text is None or len(swaps) != len(add):
            text = render_config(state.interface, peers, Secrets(secrets.private_key, psks),
                                 gateway.amneziawg)
        config = ConfigFile(config.path, ConfigFile.digest_of(text.encode()))
    for t in rm:
        _tenant_memo.pop(id(t), None)
        _peer_memo.pop(id(t), None)
    _tenant_memo.update(new_parts)
    result = (HostState(state.interface, peers, frozenset(routes), firewall, config),
              Secrets(secrets.private_key, psks, text))
    return _Index(result, routes, profiles, hosts, lans, hosts6, lans6)


def _source_item(v: int, n: int, chain: str) -> tuple[str, str, str, str]:
    return ("elem", TENANT_HOSTS if n == 32 else TENANT_MAP, _v4_cidr(v, n), "jump " + chain)


def _source_item6(v: int, n: int, chain: str) -> tuple[str, str, str, str]:
    return ("elem", TENANT_HOSTS6 if n == 128 else TENANT_MAP6, _v6_cidr(v, n), "jump " + chain)


def _one_peer(t: Tunnel, host_secret: bytes) -> tuple[Peer, str]:
    entry = _peer_memo.get(id(t))
    if entry is None or entry[0] is not t or entry[1] != host_secret:
        psk = psk_deriver(host_secret)(t.org, t.name, t.psk_rotation)
        entry = (t, host_secret, Peer(t.public_key, tunnel_allowed_ips(t), psk_digest(psk),
                                      t.cloud_keepalive, owner=t.ident), psk)
        _peer_memo[id(t)] = entry
    return entry[2], entry[3]


def _last_table_of(fw: Firewall, gateway: Gateway, ifname: str) -> Table:
    """The typed table of the last render (its chains and declarations; elements replaced)."""
    table = _tables.get(fw.fingerprint)
    if table is None:
        raise RenderError("internal: the last table is not remembered")
    return table


_tables: dict[str, Table] = {}  # fingerprint -> typed table, the last few renders


def _same_objects(a: tuple[Tunnel, ...], b: tuple[Tunnel, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


_last_host: tuple[tuple[object, ...], tuple[Tunnel, ...], tuple[HostState, Secrets],
                 _Index | None] | None = None


def _render_host(gateway: Gateway, tunnels: Sequence[Tunnel], *, interface: str | None,
                 private_key: str, host_secret: bytes,
                 config_path: Path | None) -> tuple[HostState, Secrets]:
    ifname = interface or gateway.interface
    active = active_tunnels(gateway, tunnels)
    peers, psks = render_peers(active, host_secret)
    secrets = Secrets(private_key, psks)
    iface = InterfaceConfig(ifname, gateway.listen_port, public_key(private_key),
                            interface_address(gateway), gateway.mtu, True)
    config = None
    if config_path is not None:
        text = render_config(iface, peers, secrets, gateway.amneziawg)
        secrets = Secrets(private_key, psks, text)  # kept for apply: rendered once per cycle
        config = ConfigFile(str(config_path), ConfigFile.digest_of(text.encode()))
    global _tenant_memo
    used: dict[int, _TenantParts] = {}
    state = HostState(iface, peers, render_routes(gateway, active, ifname, used),
                      render_firewall(gateway, active, ifname, used), config)
    _tenant_memo = used  # forget tunnels no longer rendered
    return state, secrets
