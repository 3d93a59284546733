"""What the lab tells the kernel and wireguard-go, as data: the `ip -batch` lines of each
namespace (cloud, infra, routed-range host, routers, LAN hosts), what a router sends into its
tunnel and its UAPI config text, and where the probe servers listen.

Pure: topology.Lab runs these (the UAPI text holds keys: it goes to the socket, never argv).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from reconciler.repo.model import Gateway

from .layout import InfraHost, RoutedHost, Router, RouterConfig

OUTSIDE_PORT = 8000  # a port in no service catalog: must always be blocked
SIP_PORT = 5060

ProbeAddresses = list[IPv4Address | IPv6Address | None]
# One probe server: its namespace, the addresses it binds, its UDP and TCP ports.
ProbeServer = tuple[str, ProbeAddresses, list[int], list[int]]


def _hex(key_b64: str) -> str:
    return base64.b64decode(key_b64).hex()


def cloud_commands(infra: InfraHost | None, routed: RoutedHost | None,
                   routers: Iterable[Router]) -> list[str]:
    """The cloud namespace's links: the infra and routed-range veths, one veth per router."""
    cmds = ["link set lo up"]
    if infra:
        i = infra
        cmds += [f"link add {i.cloud_interface} type veth peer name eth0 netns {i.netns}",
                 f"addr add {i.cloud_address}/{i.prefixlen} dev {i.cloud_interface}",
                 f"addr add {i.cloud_address6}/{i.prefixlen6} dev {i.cloud_interface} nodad",
                 f"link set {i.cloud_interface} up"]
    if routed:
        h = routed
        cmds.append(f"link add {h.cloud_interface} type veth peer name eth0 netns {h.netns}")
        if h.cloud_address:
            cmds.append(f"addr add {h.cloud_address} dev {h.cloud_interface}")
        if h.cloud_address6:
            cmds.append(f"addr add {h.cloud_address6} dev {h.cloud_interface} nodad")
        cmds.append(f"link set {h.cloud_interface} up")
    for r in routers:
        cmds += [f"link add r{r.index} type veth peer name wan0 netns {r.netns}",
                 f"addr add {r.cloud_wan_address}/30 dev r{r.index}", f"link set r{r.index} up"]
    return cmds


def infra_commands(i: InfraHost) -> list[str]:
    return ["link set lo up", f"addr add {i.address}/{i.prefixlen} dev eth0",
            f"addr add {i.address6}/{i.prefixlen6} dev eth0 nodad",
            "link set eth0 up", f"route add default via {i.cloud_address}",
            f"route add ::/0 via {i.cloud_address6}"]


def _end_host(addresses: list[str | None], routes: list[str | None]) -> list[str]:
    """An end host's `ip -batch` lines: its addresses on eth0 (IPv6 without DAD), eth0 up,
    then its routes; None entries are the family it does not have."""
    return (["link set lo up"] + [f"addr add {a}" for a in addresses if a]
            + ["link set eth0 up"] + [f"route add {r}" for r in routes if r])


def routed_commands(h: RoutedHost) -> list[str]:
    c4, c6 = h.cloud_address, h.cloud_address6
    return _end_host(
        [f"{h.address}/{c4.network.prefixlen} dev eth0" if h.address and c4 else None,
         f"{h.address6}/{c6.network.prefixlen} dev eth0 nodad" if h.address6 and c6 else None],
        [f"default via {c4.ip}" if c4 else None, f"::/0 via {c6.ip}" if c6 else None])


def cloud_networks(gw: Gateway, router: Router) -> list[IPv4Network | IPv6Network]:
    """What the customer's router sends into its tunnel: the cloud's addresses and routed
    ranges, as the customer config says (IPv6 only for a tunnel with subnet6)."""
    nets: list[IPv4Network | IPv6Network] = [IPv4Network(f"{gw.address.ip}/32"),
                                             *gw.routed_ranges]
    if router.address6 is not None and gw.address6 is not None:
        nets += [IPv6Network(f"{gw.address6.ip}/128"), *gw.routed_ranges6]
    return nets


def router_commands(r: Router, mtu: int,
                    cloud_nets: Iterable[IPv4Network | IPv6Network]) -> list[str]:
    """The router namespace: its WAN link, tunnel interface and routes, its LAN veth."""
    cmds = ["link set lo up", f"addr add {r.wan_address}/30 dev wan0", "link set wan0 up",
            f"addr add {r.address}/{r.prefixlen} dev {r.interface}"]
    if r.address6:
        cmds.append(f"addr add {r.address6}/{r.prefixlen6} dev {r.interface} nodad")
    cmds += [f"link set {r.interface} mtu {mtu} up",
             *(f"route add {n} dev {r.interface}" for n in cloud_nets)]
    if r.host_netns:
        cmds.append(f"link add lan0 type veth peer name eth0 netns {r.host_netns}")
        if r.lans:
            cmds.append(f"addr add {r.lan_address}/{r.lans[0].prefixlen} dev lan0")
        if r.lans6:
            cmds.append(f"addr add {r.lan_address6}/{r.lans6[0].prefixlen} dev lan0 nodad")
        cmds.append("link set lan0 up")
    return cmds


def lan_host_commands(r: Router) -> list[str]:
    """The LAN host behind a router (only for a router with `host_netns`)."""
    return _end_host(
        [f"{r.host_address}/{r.lans[0].prefixlen} dev eth0" if r.lans else None,
         f"{r.host_address6}/{r.lans6[0].prefixlen} dev eth0 nodad" if r.lans6 else None],
        [f"default via {r.lan_address}" if r.lans else None,
         f"::/0 via {r.lan_address6}" if r.lans6 else None])


def router_uapi(cfg: RouterConfig, psk: str, cloud_public_key: str, endpoint: str,
                allowed: Iterable[IPv4Network | IPv6Network]) -> str:
    """A router's whole WireGuard config as UAPI `set` text. `replace_peers` makes a fresh
    peer, so the router initiates a handshake at once."""
    lines = ["set=1", f"private_key={_hex(cfg.private_key)}", "replace_peers=true",
             f"public_key={_hex(cloud_public_key)}", f"preshared_key={_hex(psk)}",
             f"endpoint={endpoint}",
             "persistent_keepalive_interval=0",  # 0 then N: wireguard-go sends a keepalive now
             f"persistent_keepalive_interval={cfg.keepalive}",
             "replace_allowed_ips=true", *(f"allowed_ip={n}" for n in allowed)]
    return "\n".join(lines) + "\n\n"


def probe_servers(gw: Gateway, cloud_netns: str, infra: InfraHost | None,
                  routed: RoutedHost | None, routers: Iterable[Router]) -> list[ProbeServer]:
    """Echo/listen servers that log every arrival: cloud, infra, routers, LAN hosts."""
    cloud_udp = sorted({p for s in gw.services.values() if s.proto == "udp"
                        for r in s.ports for p in (r.first, r.last)} | {OUTSIDE_PORT})
    cloud_tcp = sorted({p for s in gw.services.values() if s.proto == "tcp"
                        for r in s.ports for p in (r.first, r.last)} | {22, OUTSIDE_PORT})
    # The cloud listens on its tunnel addresses and on its infra side: a tenant reaching
    # the host through any of its addresses shows up in the cloud's log.
    cloud_addrs: ProbeAddresses = [gw.address.ip, gw.address6.ip if gw.address6 else None]
    if infra:
        cloud_addrs += [infra.cloud_address, infra.cloud_address6]
    servers: list[ProbeServer] = [(cloud_netns, cloud_addrs, cloud_udp, cloud_tcp)]
    if infra:
        servers.append((infra.netns, [infra.address, infra.address6], [SIP_PORT], [22]))
    if routed:
        servers.append((routed.netns, [routed.address, routed.address6], cloud_udp, cloud_tcp))
    for r in routers:
        servers.append((r.netns, [r.address, r.address6], [SIP_PORT], []))
        if r.host_netns:
            servers.append((r.host_netns, [r.host_address, r.host_address6], [SIP_PORT], []))
    return servers


def serve_args(log: str, ready: str, addrs: ProbeAddresses, udp: list[int],
               tcp: list[int]) -> list[str]:
    """netprobe's `serve` arguments for one probe server."""
    args = ["serve", "--log", log, "--ready", ready]
    args += [a for addr in addrs if addr is not None for a in ("--bind", str(addr))]
    args += [a for p in udp for a in ("--udp", str(p))]
    args += [a for p in tcp for a in ("--tcp", str(p))]
    return args
