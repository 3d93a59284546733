"""Pydantic models of the config repository: one gateway file per cloud host, one file per tunnel.

These are the only shapes ops edit. Rules that need only one value live here as validators on
the field they concern, so an error's location points at that key in the YAML file. Rules that
need the gateway or several files (pool, overlaps, uniqueness, path/name agreement) live in
`reconciler.repo.crossfile`. The network value types live in `reconciler.repo.nettypes` and the
AmneziaWG block in `reconciler.repo.amneziawg`; both are re-exported here. The model imports
nothing else from the package.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from datetime import UTC, date, datetime
from enum import Enum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from reconciler.repo.amneziawg import AmneziaWG
from reconciler.repo.nettypes import (
    CIDR,
    CIDR6,
    ENDPOINT_PATTERN,
    PRIVATE_LAN_RANGES,
    ULA_RANGE,
    Endpoint,
    InterfaceAddress,
    InterfaceAddress6,
    InterfaceName,
    PrivateLAN,
    UlaCIDR6,
)
from reconciler.repo.strict import Strict

__all__ = [
    "CIDR", "CIDR6", "ENDPOINT_PATTERN", "KEY_PATTERN", "NAME_PATTERN", "PRIVATE_LAN_RANGES",
    "TEXT_MAX", "ULA_RANGE", "AmneziaWG", "Endpoint", "Gateway", "InterfaceAddress",
    "InterfaceAddress6", "InterfaceName", "Name", "OneLineText", "PortRange", "PrivateLAN",
    "Service", "Strict", "Tunnel", "TunnelStatus", "UlaCIDR6", "WireGuardKey",
]

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
_NAME_RE = re.compile(NAME_PATTERN)
KEY_PATTERN = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"
# Free text (notes, descriptions) lands in comments of nft, wg-quick and RouterOS files and in
# markdown: one line, no control characters (C0, DEL, C1), no Unicode line or paragraph breaks.
_CONTROL_RE = re.compile("[\\x00-\\x1f\\x7f-\\x9f\u2028\u2029]")
TEXT_MAX = 300


def _item_error(index: int, message: str, value: Any) -> ValidationError:
    """An error located at item `index` of the list a field validator is checking (so the YAML
    position is that item, not the whole list)."""
    return ValidationError.from_exception_data("item", [InitErrorDetails(
        type=PydanticCustomError("value_error", "{reason}", {"reason": message}),
        loc=(index,), input=value)])


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid name: use 1-63 lowercase letters, digits and '-', "
            "starting with a letter or digit"
        )
    return value


def _check_wg_key(value: Any) -> str:
    if not isinstance(value, str):
        # pydantic turns ValueError (not TypeError) into a validation error with a location
        raise ValueError(  # noqa: TRY004
            "a WireGuard key must be a base64 string such as the output of 'wg pubkey'")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"{value!r} is not valid base64; a WireGuard public key is the output of "
            "'wg pubkey' (44 characters ending in '=')"
        ) from None
    if len(raw) != 32:
        raise ValueError(
            f"a WireGuard key is exactly 32 bytes; this one decodes to {len(raw)} bytes "
            "(copy the whole output of 'wg pubkey')"
        )
    canonical = base64.b64encode(raw).decode()
    if canonical != value:
        # Non-canonical trailing bits decode to a different key than the text shows.
        raise ValueError(f"{value!r} is not canonical base64 (last character mistyped?); "
                         "copy the key again from 'wg pubkey'")
    return value


def _check_text(value: str) -> str:
    bad = _CONTROL_RE.search(value)
    if bad is not None:
        what = "a line break" if bad.group() in "\n\r\u2028\u2029" else \
            f"the control character {bad.group()!r}"
        raise ValueError(f"contains {what}; this text is one line of plain text (it is "
                         "copied into config file comments)")
    if len(value) > TEXT_MAX:
        raise ValueError(f"is {len(value)} characters long; keep it under {TEXT_MAX}")
    return value


def _to_date(value: Any) -> Any:
    """revoked_at is a calendar date. PyYAML and ruamel build different datetime classes for a
    timestamp, so both are reduced to the same `date` (UTC day) here."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return date(value.year, value.month, value.day)
    return value


Name = Annotated[
    str,
    AfterValidator(_check_name),
    WithJsonSchema({"type": "string", "pattern": NAME_PATTERN,
                    "description": "1-63 of a-z 0-9 '-', starting with a letter or digit"}),
]
WireGuardKey = Annotated[
    str,
    BeforeValidator(_check_wg_key),
    WithJsonSchema({"type": "string", "pattern": KEY_PATTERN,
                    "description": "WireGuard public key: base64 of 32 bytes"}),
]
OneLineText = Annotated[
    str,
    AfterValidator(_check_text),
    WithJsonSchema({"type": "string", "maxLength": TEXT_MAX, "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*$",
                    "description": "one line of plain text"}),
]


class PortRange(Strict):
    first: int = Field(ge=1, le=65535)
    last: int = Field(ge=1, le=65535)

    @model_validator(mode="after")
    def _ordered(self) -> PortRange:
        if self.last < self.first:
            raise ValueError(f"port range {self.first}-{self.last} is reversed")
        return self

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


def _parse_ports(value: Any) -> Any:
    """Accept `5060`, `"5060,5080"`, `"10000-20000"` or a list of those."""
    items: list[Any]
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, list):
        items = value
    else:
        return value
    out: list[Any] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not re.fullmatch(r"\d{1,5}(-\d{1,5})?", part):
                raise ValueError(f"{part!r} is not a port or port range such as 5060 or 10000-20000")
            first, _, last = part.partition("-")
            lo, hi = int(first), int(last or first)
            if not (1 <= lo <= 65535 and 1 <= hi <= 65535) or hi < lo:
                raise ValueError(f"{part!r} is not a valid port range (1-65535, low-high)")
            out.append({"first": lo, "last": hi})
    return out


class Service(Strict):
    """One entry of a gateway's service catalog, e.g. `sip: {proto: udp, ports: "5060,5080"}`."""

    proto: Literal["udp", "tcp"]
    ports: Annotated[
        tuple[PortRange, ...],
        BeforeValidator(_parse_ports),
        WithJsonSchema({"oneOf": [{"type": "integer"}, {"type": "string"},
                                  {"type": "array", "items": {"type": ["integer", "string"]}}],
                        "description": "ports: 5060, '5060,5080', '10000-20000' or a list"}),
    ] = Field(min_length=1)
    description: OneLineText = ""


class Gateway(Strict):
    """A cloud host's tenant interface: `gateway.yaml` or `gateways/<name>.yaml`."""

    name: Name
    interface: InterfaceName = "wg1"
    listen_port: int = Field(default=51821, ge=1, le=65535)
    address: InterfaceAddress = Field(description="cloud tunnel address; every customer talks to it")
    pool: CIDR = Field(description="tunnel pool the per-tenant subnets are allocated from")
    allocation_prefix: int = Field(default=30, ge=8, le=30)
    reserved: tuple[CIDR, ...] = Field(default=(), description="infrastructure ranges no tenant may overlap")
    infra_interfaces: tuple[InterfaceName, ...] = Field(default=(), description="internal interfaces tenants must never reach, e.g. wg0")
    endpoint: Endpoint
    public_key: WireGuardKey | None = Field(default=None, description="printed by 'tunnelctl bootstrap'")
    mtu: int = Field(default=1420, ge=1280, le=9000)
    services: dict[Name, Service]
    default_services: tuple[Name, ...] = ()
    routed_ranges: tuple[CIDR, ...] = Field(default=(), description="cloud service ranges customers may reach besides the tunnel address")
    amneziawg: AmneziaWG | None = Field(default=None, description="AmneziaWG obfuscation; every customer then needs an AmneziaWG client")
    # IPv6 inside the tunnels: all of address6/pool6 or none (a gateway without them drops
    # every IPv6 packet from tenants).
    address6: InterfaceAddress6 | None = Field(default=None, description="cloud IPv6 tunnel address with its on-link prefix, e.g. fd42:4242:1::1/48; needs pool6")
    pool6: UlaCIDR6 | None = Field(default=None, validate_default=True, description="IPv6 ULA pool the per-tunnel prefixes are allocated from, e.g. fd42:4242:1::/48")
    allocation_prefix6: int = Field(default=64, ge=16, le=126, validate_default=True, description="size of each tunnel's IPv6 prefix; the customer uses ::2 of it")
    reserved6: tuple[CIDR6, ...] = Field(default=(), description="IPv6 infrastructure ranges no tenant may overlap")
    routed_ranges6: tuple[CIDR6, ...] = Field(default=(), description="IPv6 cloud service ranges customers may reach besides address6")

    @field_validator("pool")
    @classmethod
    def _address_in_pool(cls, pool: IPv4Network, info: ValidationInfo) -> IPv4Network:
        address = info.data.get("address")
        if address is not None and address.ip not in pool:
            raise ValueError(f"the interface address {address} is outside the pool {pool}; "
                             "the cloud's tunnel address must be inside the pool")
        return pool

    @field_validator("pool6")
    @classmethod
    def _address6_in_pool6(cls, pool6: IPv6Network | None,
                           info: ValidationInfo) -> IPv6Network | None:
        address6 = info.data.get("address6")
        if pool6 is None:
            if address6 is not None:
                raise ValueError("address6 is set but pool6 is not: declare the IPv6 ULA pool "
                                 "the tunnels' prefixes come from, or remove address6")
            return pool6
        if address6 is None and "address6" not in info.data:
            return pool6  # address6 itself failed; its own error says why
        if address6 is None:
            raise ValueError("pool6 is set but address6 is not: add the cloud's IPv6 tunnel "
                             f"address, e.g. address6: {pool6.network_address + 1}/"
                             f"{pool6.prefixlen}")
        if address6.ip not in pool6:
            raise ValueError(f"the IPv6 interface address {address6} is outside pool6 {pool6}; "
                             "the cloud's IPv6 tunnel address must be inside the pool")
        return pool6

    @field_validator("allocation_prefix6")
    @classmethod
    def _prefix6_fits(cls, length: int, info: ValidationInfo) -> int:
        pool6 = info.data.get("pool6")
        if pool6 is not None and length <= pool6.prefixlen:
            raise ValueError(f"allocation_prefix6 /{length} is not smaller than pool6 {pool6}; "
                             "each tunnel's prefix must be a part of the pool")
        return length

    @field_validator("routed_ranges6", "reserved6")
    @classmethod
    def _v6_ranges_need_pool6(cls, nets: tuple[IPv6Network, ...],
                              info: ValidationInfo) -> tuple[IPv6Network, ...]:
        if nets and info.data.get("pool6") is None and "pool6" in info.data:
            raise _item_error(0, f"{info.field_name} needs IPv6 in the tunnels: declare "
                              "address6 and pool6 first", str(nets[0]))
        return nets

    @field_validator("default_services")
    @classmethod
    def _defaults_in_catalog(cls, names: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        catalog = info.data.get("services")
        if catalog is not None:
            for i, name in enumerate(names):
                if name not in catalog:
                    raise _item_error(i, f"{name!r} is not in the service catalog "
                                      f"{sorted(catalog)}; add it under services: or remove it",
                                      name)
        return names

    @property
    def endpoint_host(self) -> str:
        host, _, _ = self.endpoint.rpartition(":")
        return host.strip("[]")

    @property
    def endpoint_ip(self) -> IPv4Address | None:
        """The endpoint host when it is a literal IPv4 address (not a DNS name)."""
        try:
            ip = ipaddress.ip_address(self.endpoint_host)
        except ValueError:
            return None
        return ip if isinstance(ip, IPv4Address) else None

    @property
    def gateway_subnet(self) -> IPv4Network:
        """The allocation-sized block holding the cloud's own address; never given to a tenant."""
        return IPv4Network(f"{self.address.ip}/{self.allocation_prefix}", strict=False)

    @property
    def dual_stack(self) -> bool:
        """IPv6 inside the tunnels (address6 and pool6 declared)."""
        return self.address6 is not None and self.pool6 is not None

    @property
    def gateway_subnet6(self) -> IPv6Network | None:
        """The allocation6-sized block holding the cloud's IPv6 address; never given out."""
        if self.address6 is None:
            return None
        return IPv6Network(f"{self.address6.ip}/{self.allocation_prefix6}", strict=False)


class TunnelStatus(str, Enum):
    active = "active"
    disabled = "disabled"
    revoked = "revoked"


class Tunnel(Strict):
    """One customer tunnel: `tenants/<org>/<name>.yaml`."""

    org: Name
    name: Name
    gateway: Name
    public_key: WireGuardKey
    subnet: CIDR = Field(description="the tenant's /30; the customer uses .2")
    lans: tuple[PrivateLAN, ...] = Field(default=(), description="customer LANs routed through the tunnel")
    subnet6: CIDR6 | None = Field(default=None, description="the tenant's IPv6 prefix from the gateway's pool6 (allocation_prefix6 long); the customer uses ::2. Without it the tunnel is IPv4 only")
    lans6: tuple[UlaCIDR6, ...] = Field(default=(), description="customer IPv6 LANs (unique local) routed through the tunnel; the gateway needs pool6")
    status: TunnelStatus = TunnelStatus.active
    revoked_at: Annotated[date | None, BeforeValidator(_to_date)] = Field(
        default=None, validate_default=True,
        description="the day the tunnel was revoked; its subnet stays reserved for 30 days")
    services: tuple[Name, ...] | None = Field(default=None, description="subset of the gateway catalog; default: the gateway's default_services")
    persistent_keepalive: int = Field(
        default=25, ge=0, le=65535,
        description="the customer router's keepalive in seconds (it keeps its NAT mapping "
                    "open); printed in the customer config, never set on the cloud's peer")
    cloud_keepalive: int = Field(
        default=0, ge=0, le=65535,
        description="keepalive the cloud sends to this peer, in seconds; 0 (default) = none. "
                    "Only for a customer that cannot send its own: the cloud retries a "
                    "handshake to every endpoint-less peer that has one")
    psk_rotation: int = Field(default=0, ge=0, description="bump to rotate the derived preshared key")
    notes: OneLineText = ""

    @field_validator("lans", "lans6")
    @classmethod
    def _lans_distinct(cls, lans: tuple[IPv4Network | IPv6Network, ...]
                       ) -> tuple[IPv4Network | IPv6Network, ...]:
        for i, lan in enumerate(lans):
            for other in lans[:i]:
                if lan.version == other.version and lan.overlaps(other):
                    raise _item_error(i, f"LAN {lan} overlaps LAN {other} of this tunnel; "
                                      "list each network once", str(lan))
        return lans

    @field_validator("revoked_at")
    @classmethod
    def _revoked_at_matches_status(cls, value: date | None, info: ValidationInfo) -> date | None:
        status = info.data.get("status")
        if status is TunnelStatus.revoked and value is None:
            raise ValueError("status is revoked, so revoked_at is required: add the day it was "
                             "revoked, e.g. 'revoked_at: 2026-01-31'")
        if status is not None and status is not TunnelStatus.revoked and value is not None:
            raise ValueError(f"revoked_at is only allowed when status is revoked (status is "
                             f"{status.value}); remove revoked_at or set status: revoked")
        return value

    @property
    def ident(self) -> str:
        return f"{self.org}/{self.name}"

    @property
    def customer_address(self) -> IPv4Address:
        return self.subnet.network_address + 2

    @property
    def customer_address6(self) -> IPv6Address | None:
        """The customer's IPv6 tunnel address (::2 of subnet6), or None (IPv4 only)."""
        return None if self.subnet6 is None else self.subnet6.network_address + 2
