"""Network value types of the repository model: IPv4/IPv6 CIDRs, interface addresses, interface
names and endpoints, each a pydantic type with its parser, its canonical-form rule and its JSON
schema. Split out of `reconciler.repo.model`, which re-exports them; imports nothing else from
the package.
"""

from __future__ import annotations

import ipaddress
import re
from ipaddress import IPv4Network, IPv6Network
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, WithJsonSchema

# Linux interface names: 1-15 bytes (IFNAMSIZ 16 with the NUL), never "." or "..", no "/", ":"
# or whitespace (the kernel's dev_valid_name); we also keep to characters that nft, ip and
# RouterOS print and parse unquoted.
_IFNAME_RE = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9_.-]{1,15}")
# host:port where host is a DNS name, an IPv4 literal or a bracketed IPv6 literal.
_DNS_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
ENDPOINT_PATTERN = (rf"^(?:{_DNS_LABEL}(?:\.{_DNS_LABEL})*\.?|\[[0-9A-Fa-f:.]+\]):"
                    r"[1-9][0-9]{0,4}$")
_ENDPOINT_RE = re.compile(ENDPOINT_PATTERN)

# Private IPv4 space a customer LAN may use (RFC 1918 and RFC 6598 shared CGNAT space).
PRIVATE_LAN_RANGES: tuple[IPv4Network, ...] = tuple(
    IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)
# IPv6 inside tunnels is unique local space only (RFC 4193). It keeps every IPv6 claim far
# above every IPv4 address as an integer, so the cross-file sweeps can hold both families in
# one list, and a mistyped global prefix can never capture the host's own IPv6 traffic.
ULA_RANGE = IPv6Network("fc00::/7")


# Per family: (class, name, example, host prefix length, what canonical means, where the
# other family goes). IPv4 and IPv6 values live in separate keys (lans / lans6, ...).
_FAMILIES: dict[int, tuple[type[IPv4Network | IPv6Network], str, str, int, str, str]] = {
    4: (IPv4Network, "IPv4", "192.168.1.0/24", 32, "network address, host bits zero",
        ("IPv6 networks go in the matching '...6' key (lans6, subnet6, pool6, reserved6, "
        "routed_ranges6)")),
    6: (IPv6Network, "IPv6", "fd42:4242:1::/48", 64, ("network address, host bits zero, "
        "lowercase, zeros compressed"), "IPv4 networks go in the key without the '6'"),
}


def _parse_network(value: Any, version: int) -> IPv4Network | IPv6Network:
    cls, name, example, host_len, canonical, elsewhere = _FAMILIES[version]
    if isinstance(value, cls):
        return value
    if not isinstance(value, str):
        raise ValueError(  # noqa: TRY004
            f"expected an {name} CIDR string such as '{example}', got {value!r}")
    text = value.strip()
    if "/" not in text:
        raise ValueError(f"{value!r} has no prefix length; write it as a CIDR, e.g. "
                         f"'{text}/{host_len}'")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an {name} CIDR such as '{example}'") from None
    if net.prefixlen == 0:
        raise ValueError(f"{value!r} covers every address and would capture all traffic; "
                         "name the specific network instead")
    if not isinstance(net, cls):
        other = "IPv6" if version == 4 else "IPv4"
        raise ValueError(f"{value!r} is {other}; {elsewhere}")  # noqa: TRY004
    if str(net) != text:
        raise ValueError(f"{value!r} is not canonical; write it as '{net}' ({canonical})")
    return net


def _parse_cidr(value: Any) -> IPv4Network:
    net = _parse_network(value, 4)
    assert isinstance(net, IPv4Network)
    return net


def _parse_cidr6(value: Any) -> IPv6Network:
    net = _parse_network(value, 6)
    assert isinstance(net, IPv6Network)
    return net


def _check_ula(net: IPv6Network) -> IPv6Network:
    if not net.subnet_of(ULA_RANGE):
        raise ValueError(f"{net} is not unique local IPv6 space; IPv6 inside tunnels must lie "
                         f"inside {ULA_RANGE} (e.g. fd42:4242:1::/48)")
    return net


def _check_private_lan(lan: IPv4Network) -> IPv4Network:
    if not any(lan.subnet_of(r) for r in PRIVATE_LAN_RANGES):
        raise ValueError(
            f"LAN {lan} is not a private range; customer LANs must lie inside 10.0.0.0/8, "
            "172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10"
        )
    return lan


# Per family: (class, name, example) of an interface address (address6 is ULA, like pool6).
_INTERFACES: dict[int, tuple[type[ipaddress.IPv4Interface | ipaddress.IPv6Interface], str, str]] = {
    4: (ipaddress.IPv4Interface, "IPv4", "10.20.0.1/16"),
    6: (ipaddress.IPv6Interface, "IPv6", "fd42:4242:1::1/48"),
}


def _parse_interface(value: Any, version: int) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    cls, name, example = _INTERFACES[version]
    if isinstance(value, cls):
        return value
    try:
        iface = ipaddress.ip_interface(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an address with prefix such as '{example}'") from None
    if not isinstance(iface, cls) or "/" not in str(value):
        raise ValueError(f"{value!r} must be an {name} address with prefix such as '{example}'")
    if isinstance(iface, ipaddress.IPv6Interface):
        _check_ula(iface.network)
    return iface


def _parse_interface_address(value: Any) -> ipaddress.IPv4Interface:
    iface = _parse_interface(value, 4)
    assert isinstance(iface, ipaddress.IPv4Interface)
    return iface


def _parse_interface_address6(value: Any) -> ipaddress.IPv6Interface:
    iface = _parse_interface(value, 6)
    assert isinstance(iface, ipaddress.IPv6Interface)
    return iface


def _check_ifname(value: str) -> str:
    if not _IFNAME_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a Linux interface name (1-15 of A-Z a-z 0-9 _ . -, "
                         "not '.' or '..')")
    return value


def _check_endpoint(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not _ENDPOINT_RE.fullmatch(value) or not 1 <= int(port) <= 65535 or len(host) > 253:
        raise ValueError(f"endpoint {value!r} must be host:port with a DNS name, an IPv4 address "
                         "or an [IPv6] address, e.g. 203.0.113.10:51821 or vpn.example.com:51821")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"endpoint {value!r}: {host} is not an IPv6 address") from None
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"endpoint {value!r}: {host} is not an IPv4 address") from None
    return value


CIDR = Annotated[
    IPv4Network,
    BeforeValidator(_parse_cidr),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "description": "canonical IPv4 CIDR, e.g. 192.168.1.0/24",
                    "pattern": r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$"}),
]
PrivateLAN = Annotated[CIDR, AfterValidator(_check_private_lan)]
CIDR6 = Annotated[
    IPv6Network,
    BeforeValidator(_parse_cidr6),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^[0-9a-f:]+/\d{1,3}$",
                    "description": "canonical IPv6 CIDR, e.g. fd42:4242:1::/48"}),
]
UlaCIDR6 = Annotated[CIDR6, AfterValidator(_check_ula)]
InterfaceName = Annotated[
    str,
    AfterValidator(_check_ifname),
    WithJsonSchema({"type": "string", "pattern": f"^{_IFNAME_RE.pattern}$",
                    "description": "Linux interface name: 1-15 of A-Z a-z 0-9 _ . -"}),
]
Endpoint = Annotated[
    str,
    AfterValidator(_check_endpoint),
    WithJsonSchema({"type": "string", "pattern": ENDPOINT_PATTERN,
                    "description": "public host:port customers connect to"}),
]
InterfaceAddress = Annotated[
    ipaddress.IPv4Interface,
    BeforeValidator(_parse_interface_address),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "description": "IPv4 address with prefix, e.g. 10.20.0.1/16"}),
]
InterfaceAddress6 = Annotated[
    ipaddress.IPv6Interface,
    BeforeValidator(_parse_interface_address6),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string",
                    "description": "IPv6 ULA address with prefix, e.g. fd42:4242:1::1/48"}),
]
