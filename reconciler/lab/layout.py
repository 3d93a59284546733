"""Where everything in a lab goes: names and addresses, decided before anything is built.

Pure: no processes, no host access. Namespaces are `tcl-<lab>-<role>`; wireguard-go interface
names carry the lab name too, because /var/run/wireguard is shared by every namespace and an
interface name is at most 15 characters.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from pathlib import Path

from reconciler.repo.model import Gateway, Tunnel

RUN_ROOT = Path("/run/tunnelctl-lab")
NS_PREFIX = "tcl-"
UNDERLAY = IPv4Network("198.18.0.0/15")  # benchmarking range: the lab's stand-in internet
LAB_NAME = re.compile(r"^[a-z][a-z0-9]{0,5}$")
MAX_ROUTERS = UNDERLAY.num_addresses // 4  # one /30 link per router
# The infra link's IPv6 when the gateway declares no reserved6: the host has IPv6 on its
# internal side even when its tunnels do not (a tenant must not reach it either way).
INFRA6_FALLBACK = IPv6Network("fd00:1ab:1ab::/64")


class LayoutError(ValueError):
    pass


@dataclass(frozen=True)
class Router:
    """One simulated customer site: router namespace + optional LAN host behind it."""

    ident: str
    index: int
    netns: str
    interface: str
    wan_address: IPv4Address  # the router's "internet" address
    cloud_wan_address: IPv4Address  # cloud end of the link: the router's endpoint host
    address: IPv4Address  # customer tunnel address (.2 of its /30)
    prefixlen: int
    lans: tuple[IPv4Network, ...]
    host_netns: str | None = None
    host_address: IPv4Address | None = None
    lan_address: IPv4Address | None = None  # the router's address on its first LAN
    # IPv6 (a tunnel with subnet6 on a dual-stack gateway): ::2 of subnet6, the first lans6.
    address6: IPv6Address | None = None
    prefixlen6: int | None = None
    lans6: tuple[IPv6Network, ...] = ()
    host_address6: IPv6Address | None = None
    lan_address6: IPv6Address | None = None

    @property
    def addresses(self) -> tuple[IPv4Address | IPv6Address, ...]:
        """The router's own tunnel addresses, IPv4 first."""
        return (self.address,) + ((self.address6,) if self.address6 else ())


@dataclass(frozen=True)
class RouterConfig:
    """The customer-side WireGuard settings; changed with `Lab.configure_router`."""

    private_key: str
    psk_rotation: int
    keepalive: int
    # Networks the router sends into its tunnel besides the cloud's addresses and routed ranges:
    # a hostile customer routing more (`Lab.route_into_tunnel`).
    extra_allowed: tuple[IPv4Network | IPv6Network, ...] = ()


@dataclass(frozen=True)
class InfraHost:
    """A stand-in for internal infrastructure (the NUC behind wg0) that tenants must not reach."""

    netns: str
    cloud_interface: str
    cloud_address: IPv4Address
    address: IPv4Address
    prefixlen: int
    cloud_address6: IPv6Address  # the cloud's IPv6 on its infra interface (::1)
    address6: IPv6Address  # the infra host's (::2)
    prefixlen6: int


@dataclass(frozen=True)
class RoutedHost:
    """A host in the gateway's first routed range(s), behind the cloud: tenants may reach it
    on their services only. One namespace for both families (either may be absent)."""

    netns: str
    cloud_interface: str
    cloud_address: IPv4Interface | None  # the cloud's end of the link, with the range's prefix
    address: IPv4Address | None
    cloud_address6: IPv6Interface | None
    address6: IPv6Address | None


def new_lab_name() -> str:
    return "x" + secrets.token_hex(2)  # a letter first, 5 chars: fits every interface name


def check_lab_name(name: str) -> str:
    if not LAB_NAME.fullmatch(name):
        raise LayoutError(f"lab name {name!r}: use 1-6 lowercase letters/digits, letter first "
                          "(it becomes part of 15-character interface names)")
    return name


def namespace(lab: str, role: str) -> str:
    return f"{NS_PREFIX}{lab}-{role}"


def plan_router(lab: str, k: int, tunnel: Tunnel) -> Router:
    if k >= MAX_ROUTERS:
        raise LayoutError(f"at most {MAX_ROUTERS} routers fit in {UNDERLAY}")
    base = UNDERLAY.network_address + 4 * k  # router k's /30 link: cloud .1, router .2
    lans = tunnel.lans
    lans6 = tunnel.lans6 if tunnel.subnet6 is not None else ()
    host_ns = host = lan_addr = host6 = lan_addr6 = None
    if lans or lans6:
        host_ns = namespace(lab, f"h{k}")
    if lans:
        lan_addr = lans[0].network_address + 1
        host = lans[0].network_address + (10 if lans[0].num_addresses > 12 else 2)
    if lans6:
        lan_addr6 = lans6[0].network_address + 1
        host6 = lans6[0].network_address + (0x10 if lans6[0].num_addresses > 0x12 else 2)
    sub6 = tunnel.subnet6
    return Router(tunnel.ident, k, namespace(lab, f"r{k}"), f"tc{lab}r{k}", base + 2, base + 1,
                  tunnel.customer_address, tunnel.subnet.prefixlen, lans, host_ns, host, lan_addr,
                  tunnel.customer_address6, sub6.prefixlen if sub6 else None, lans6, host6,
                  lan_addr6)


def plan_infra(lab: str, gateway: Gateway) -> InfraHost | None:
    """The first reserved range behind the first infra interface, if the gateway lists both."""
    if not (gateway.reserved and gateway.infra_interfaces):
        return None
    net = gateway.reserved[0]
    net6 = gateway.reserved6[0] if gateway.reserved6 else INFRA6_FALLBACK
    return InfraHost(namespace(lab, "infra"), gateway.infra_interfaces[0],
                     net.network_address + 1, net.network_address + 2, net.prefixlen,
                     net6.network_address + 1, net6.network_address + 2, net6.prefixlen)


def plan_routed(lab: str, gateway: Gateway) -> RoutedHost | None:
    """A host in routed_ranges[0] and/or routed_ranges6[0] (.1/::1 the cloud, .10/::10 it)."""
    if not (gateway.routed_ranges or gateway.routed_ranges6):
        return None
    v4 = gateway.routed_ranges[0] if gateway.routed_ranges else None
    v6 = gateway.routed_ranges6[0] if gateway.routed_ranges6 else None
    return RoutedHost(
        namespace(lab, "svc"), "svc0",
        IPv4Interface(f"{v4.network_address + 1}/{v4.prefixlen}") if v4 else None,
        v4.network_address + (10 if v4.num_addresses > 12 else 2) if v4 else None,
        IPv6Interface(f"{v6.network_address + 1}/{v6.prefixlen}") if v6 else None,
        v6.network_address + (0x10 if v6.num_addresses > 0x12 else 2) if v6 else None)
