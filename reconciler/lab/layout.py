"""Where everything in a lab goes: names and addresses, decided before anything is built.

Pure: no processes, no host access. Namespaces are `tcl-<lab>-<role>`; wireguard-go interface
names carry the lab name too, because /var/run/wireguard is shared by every namespace and an
interface name is at most 15 characters.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from reconciler.repo.model import Gateway, Tunnel

RUN_ROOT = Path("/run/tunnelctl-lab")
NS_PREFIX = "tcl-"
UNDERLAY = IPv4Network("198.18.0.0/15")  # benchmarking range: the lab's stand-in internet
LAB_NAME = re.compile(r"^[a-z][a-z0-9]{0,5}$")
MAX_ROUTERS = UNDERLAY.num_addresses // 4  # one /30 link per router


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


@dataclass(frozen=True)
class RouterConfig:
    """The customer-side WireGuard settings; changed with `Lab.configure_router`."""

    private_key: str
    psk_rotation: int
    keepalive: int
    extra_allowed: tuple[IPv4Network, ...] = ()  # a hostile customer routing more into the tunnel


@dataclass(frozen=True)
class InfraHost:
    """A stand-in for internal infrastructure (the NUC behind wg0) that tenants must not reach."""

    netns: str
    cloud_interface: str
    cloud_address: IPv4Address
    address: IPv4Address


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
    host_ns = host = lan_addr = None
    if lans:
        host_ns = namespace(lab, f"h{k}")
        lan_addr = lans[0].network_address + 1
        host = lans[0].network_address + (10 if lans[0].num_addresses > 12 else 2)
    return Router(tunnel.ident, k, namespace(lab, f"r{k}"), f"tc{lab}r{k}", base + 2, base + 1,
                  tunnel.customer_address, tunnel.subnet.prefixlen, lans, host_ns, host, lan_addr)


def plan_infra(lab: str, gateway: Gateway) -> InfraHost | None:
    """The first reserved range behind the first infra interface, if the gateway lists both."""
    if not (gateway.reserved and gateway.infra_interfaces):
        return None
    net = gateway.reserved[0]
    return InfraHost(namespace(lab, "infra"), gateway.infra_interfaces[0],
                     net.network_address + 1, net.network_address + 2)
