"""Render, per tunnel (pure): what one tunnel model contributes to the host.

Its peer (AllowedIPs, the PSK derived by HKDF from the host secret and the tunnel identity +
rotation), its routes and its firewall sources, memoised by the identity of the (frozen)
tunnel model in `MEMO`: loading keeps the model object of an unchanged file, so a cycle after
a one-file commit derives one PSK and recomputes one tenant, not 16k. The whole-host render
(reconciler.engine.render) and its incremental patching (render_patch) both build from here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from reconciler.engine.hoststate import Peer, Route
from reconciler.engine.psk import psk_deriver, psk_digest
from reconciler.repo.model import Gateway, Tunnel, TunnelStatus


class RenderError(ValueError):
    """The repo asks for something the host cannot express (names the tunnel)."""




class Memo:
    """What the last render computed, by the identity of its tunnel models. Entries hold their
    model, so an id cannot be reused while it is a key here; the PSKs are those the cycle holds
    in Secrets anyway. A render replaces the dicts with the entries it used (forgetting tunnels
    no longer rendered); patching edits them in place."""

    def __init__(self) -> None:
        self.peers: dict[int, tuple[Tunnel, bytes, Peer, str]] = {}
        self.tenants: dict[int, TenantParts] = {}


# ------------------------------------------------------------------------------- peers


def v4_cidr(value: int, length: int) -> str:
    # str() of an ipaddress object re-formats it on every call; this is the same text, cheaper.
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}/{length}"


def customer_int(tunnel: Tunnel) -> int:
    """tunnel.customer_address as an integer, without building an IPv4Address (at 16k tunnels
    the ipaddress arithmetic was a fifth of a cold render)."""
    return int(tunnel.subnet.network_address) + 2


def tunnel_allowed_ips(tunnel: Tunnel, host: int | None = None) -> tuple[str, ...]:
    """The customer's /32 plus its LANs: what cryptokey routing accepts from this peer.

    The canonical_ips form (deduplicated, sorted by address then prefix length), built from
    the model's IPv4 objects, which are already normalised, instead of from text.
    """
    host = customer_int(tunnel) if host is None else host
    if not tunnel.lans:
        v4: tuple[str, ...] = (v4_cidr(host, 32),)
    else:
        nets = {(host, 32)}
        nets.update((int(n.network_address), n.prefixlen) for n in tunnel.lans)
        v4 = tuple(v4_cidr(v, n) for v, n in sorted(nets))
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
    memo, used = MEMO.peers, {}
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
    MEMO.peers = used  # forget tunnels no longer rendered
    return peers, psks


def one_peer(t: Tunnel, host_secret: bytes) -> tuple[Peer, str]:
    entry = MEMO.peers.get(id(t))
    if entry is None or entry[0] is not t or entry[1] != host_secret:
        psk = psk_deriver(host_secret)(t.org, t.name, t.psk_rotation)
        entry = (t, host_secret, Peer(t.public_key, tunnel_allowed_ips(t), psk_digest(psk),
                                      t.cloud_keepalive, owner=t.ident), psk)
        MEMO.peers[id(t)] = entry
    return entry[2], entry[3]


def is_active(gateway: Gateway, t: Tunnel) -> bool:
    return t.gateway == gateway.name and t.status is TunnelStatus.active


# ------------------------------------------------------------------------------ routes


def render_routes(gateway: Gateway, tunnels: Sequence[Tunnel], interface: str,
                  used: dict[int, TenantParts] | None = None) -> frozenset[Route]:
    """LAN routes via the interface. A customer /32 is routed only when the interface's own
    prefix (the on-link route of e.g. 10.20.0.1/16) does not already cover it."""
    routes: set[Route] = set()
    used = {} if used is None else used
    for t in tunnels:
        routes.update(tenant_parts(gateway, t, interface, used).routes)
    return frozenset(routes)


def _tenant_routes(gateway: Gateway, t: Tunnel, interface: str,
                   host: int | None = None) -> tuple[Route, ...]:
    host = customer_int(t) if host is None else host
    out = [Route(v4_cidr(int(lan.network_address), lan.prefixlen), interface) for lan in t.lans]
    lo, hi = _on_link(gateway)
    if not lo <= host <= hi:
        out.append(Route(v4_cidr(host, 32), interface))
    if t.subnet6 is not None or t.lans6:
        out += _tenant_routes6(gateway, t, interface)
    return tuple(out)


def _on_link(gateway: Gateway) -> tuple[int, int]:
    """The first and last address of the gateway's on-link prefix, kept for the last gateway
    asked (a render asks 16k times about one)."""
    global _on_link_last
    if _on_link_last[0] is not gateway:
        net = gateway.address.network
        _on_link_last = (gateway, (int(net.network_address), int(net.broadcast_address)))
    return _on_link_last[1]


_on_link_last: tuple[Gateway | None, tuple[int, int]] = (None, (0, -1))


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
class TenantParts:
    """What one tunnel contributes to routes and the firewall, for one gateway+interface."""

    tunnel: Tunnel
    gateway: Gateway
    interface: str
    routes: tuple[Route, ...]
    services: tuple[str, ...]
    sources: tuple[tuple[int, int], ...]  # tenant-map keys: (network as int, prefix length)
    sources6: tuple[tuple[int, int], ...] = ()  # the IPv6 maps' keys (a dual-stack gateway)


def tenant_parts(gateway: Gateway, t: Tunnel, interface: str,
            used: dict[int, TenantParts]) -> TenantParts:
    """Memoised by the identity of the (frozen) tunnel model, like the peers: a cycle after a
    one-file commit recomputes one tenant, not 16k (see Memo). Entries a render used
    are collected in `used`; render_host keeps those for the next render."""
    entry = used.get(id(t)) or MEMO.tenants.get(id(t))
    if entry is not None and entry.tunnel is t and entry.gateway is gateway \
            and entry.interface == interface:
        used[id(t)] = entry
        return entry
    services = tunnel_services(gateway, t)
    host = customer_int(t)
    sources: tuple[tuple[int, int], ...]
    if not t.lans:
        sources = ((host, 32),)
    elif len(t.lans) == 1 and not _holds(t.lans[0], host) and not (
            t.lans[0].prefixlen == 32 and int(t.lans[0].network_address) >> 1 == host >> 1):
        # One LAN that neither holds the host nor pairs with it into a /31: nothing to merge.
        lan = t.lans[0]
        sources = tuple(sorted([(host, 32), (int(lan.network_address), lan.prefixlen)]))
    else:  # nft refuses overlapping intervals: collapsed as collapse_addresses does
        nets = ipaddress.collapse_addresses([ipaddress.IPv4Network((host, 32)), *t.lans])
        sources = tuple((int(n.network_address), n.prefixlen) for n in nets)
    entry = TenantParts(t, gateway, interface, _tenant_routes(gateway, t, interface, host),
                         services, sources, _sources6(gateway, t))
    used[id(t)] = entry
    return entry


def _holds(net: ipaddress.IPv4Network, host: int) -> bool:
    return int(net.network_address) <= host <= int(net.broadcast_address)


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


def tunnel_services(gateway: Gateway, tunnel: Tunnel) -> tuple[str, ...]:
    names = tunnel.services if tunnel.services is not None else gateway.default_services
    global _services_last
    if _services_last[0] is not gateway:
        _services_last = (gateway, {})
    known = _services_last[1]  # by the names asked for: 16k tunnels ask for a handful of lists
    found = known.get(names)
    if found is not None:
        return found
    unknown = [n for n in names if n not in gateway.services]
    if unknown:
        raise RenderError(f"{tunnel.ident}: services {unknown} are not in gateway "
                          f"{gateway.name}'s catalog {sorted(gateway.services)}")
    found = known[names] = tuple(sorted(set(names)))
    return found


_services_last: tuple[Gateway | None, dict[tuple[str, ...], tuple[str, ...]]] = (None, {})


MEMO = Memo()
