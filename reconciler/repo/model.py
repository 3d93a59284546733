"""Pydantic models of the config repository: one gateway file per cloud host, one file per tunnel.

These are the only shapes ops edit. Rules that need only one value live here as validators on
the field they concern, so an error's location points at that key in the YAML file. Rules that
need the gateway or several files (pool, overlaps, uniqueness, path/name agreement) live in
`reconciler.repo.crossfile`. The model imports nothing else from the package.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from enum import Enum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
_NAME_RE = re.compile(NAME_PATTERN)
KEY_PATTERN = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"
# Linux interface names: 1-15 bytes (IFNAMSIZ 16 with the NUL), never "." or "..", no "/", ":"
# or whitespace (the kernel's dev_valid_name); we also keep to characters that nft, ip and
# RouterOS print and parse unquoted.
_IFNAME_RE = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9_.-]{1,15}")
# Free text (notes, descriptions) lands in comments of nft, wg-quick and RouterOS files and in
# markdown: one line, no control characters (C0, DEL, C1), no Unicode line or paragraph breaks.
_CONTROL_RE = re.compile("[\\x00-\\x1f\\x7f-\\x9f\u2028\u2029]")
TEXT_MAX = 300
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


def _parse_interface_address(value: Any) -> ipaddress.IPv4Interface:
    if isinstance(value, ipaddress.IPv4Interface):
        return value
    try:
        iface = ipaddress.ip_interface(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an address with prefix such as '10.20.0.1/16'") from None
    if not isinstance(iface, ipaddress.IPv4Interface) or "/" not in str(value):
        raise ValueError(f"{value!r} must be an IPv4 address with prefix such as '10.20.0.1/16'")
    return iface


def _parse_interface_address6(value: Any) -> ipaddress.IPv6Interface:
    if isinstance(value, ipaddress.IPv6Interface):
        return value
    try:
        iface = ipaddress.ip_interface(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an address with prefix such as "
                         "'fd42:4242:1::1/48'") from None
    if not isinstance(iface, ipaddress.IPv6Interface) or "/" not in str(value):
        raise ValueError(f"{value!r} must be an IPv6 address with prefix such as "
                         "'fd42:4242:1::1/48'")
    _check_ula(iface.network)
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
OneLineText = Annotated[
    str,
    AfterValidator(_check_text),
    WithJsonSchema({"type": "string", "maxLength": TEXT_MAX, "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*$",
                    "description": "one line of plain text"}),
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


class Strict(BaseModel):
    """Base for repo files: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


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


# AmneziaWG (the obfuscating WireGuard fork). Limits as amneziawg-go and its documentation
# state them: WireGuard's handshake initiation is 148 bytes and its response 92, so a padded
# message still fits a 1280-byte path when S1 <= 1280 - 148 and S2 <= 1280 - 92; the receiver
# tells the two apart by size, so 148 + S1 must differ from 92 + S2; the H values replace
# WireGuard's message types 1-4, so they must differ from each other and from 1-4.
AWG_PATH_MTU = 1280
AWG_INIT_SIZE, AWG_RESPONSE_SIZE = 148, 92
AWG_HEADER_MAX = 2**32 - 1  # a message type is a little-endian uint32


def _awg_range(lo: int, hi: int, what: str, why: str = "") -> Callable[[int], int]:
    def check(value: int) -> int:
        if not lo <= value <= hi:
            raise ValueError(f"{what} must be {lo}-{hi}{why}, not {value}")
        return value
    return check


def _awg_schema(lo: int, hi: int, what: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "integer", "minimum": lo, "maximum": hi, "description": what})


# Strict integers: YAML `true` or `4.0` are mistakes here, not numbers.
_S1_WHY = f" (the {AWG_INIT_SIZE}-byte initiation plus S1 must fit {AWG_PATH_MTU} bytes)"
_S2_WHY = f" (the {AWG_RESPONSE_SIZE}-byte response plus S2 must fit {AWG_PATH_MTU} bytes)"
AwgJc = Annotated[int, Field(strict=True), AfterValidator(_awg_range(1, 128, "Jc")),
                  _awg_schema(1, 128, "Jc: junk packets sent before each handshake")]
AwgJmin = Annotated[int, Field(strict=True), AfterValidator(_awg_range(0, AWG_PATH_MTU - 1, "Jmin")),
                    _awg_schema(0, AWG_PATH_MTU - 1, "Jmin: smallest junk packet, bytes")]
AwgJmax = Annotated[int, Field(strict=True), AfterValidator(_awg_range(1, AWG_PATH_MTU, "Jmax")),
                    _awg_schema(1, AWG_PATH_MTU, "Jmax: largest junk packet, bytes (> Jmin)")]
AwgS1 = Annotated[int, Field(strict=True),
                  AfterValidator(_awg_range(0, AWG_PATH_MTU - AWG_INIT_SIZE, "S1", _S1_WHY)),
                  _awg_schema(0, AWG_PATH_MTU - AWG_INIT_SIZE,
                              "S1: padding of the handshake initiation, bytes")]
AwgS2 = Annotated[int, Field(strict=True),
                  AfterValidator(_awg_range(0, AWG_PATH_MTU - AWG_RESPONSE_SIZE, "S2", _S2_WHY)),
                  _awg_schema(0, AWG_PATH_MTU - AWG_RESPONSE_SIZE,
                              "S2: padding of the handshake response, bytes (S1 + 56 != S2)")]
AwgHeader = Annotated[int, Field(strict=True),
                      AfterValidator(_awg_range(5, AWG_HEADER_MAX, "a message type header",
                                                " (1-4 are WireGuard's own message types)")),
                      _awg_schema(5, AWG_HEADER_MAX, "message type header; H1-H4 all different")]


class AmneziaWG(Strict):
    """Obfuscation parameters of an AmneziaWG gateway. Every customer must use exactly these
    (a mismatch drops data while handshakes may still succeed), so the gateway file is the
    one place they are written; the customer configs are rendered from this block."""

    jc: AwgJc
    jmin: AwgJmin
    jmax: AwgJmax
    s1: AwgS1
    s2: AwgS2
    h1: AwgHeader
    h2: AwgHeader
    h3: AwgHeader
    h4: AwgHeader

    # Rules across keys are checked on the later key, so the error points at a line to change.
    @field_validator("jmax")
    @classmethod
    def _jmin_below_jmax(cls, jmax: int, info: ValidationInfo) -> int:
        jmin = info.data.get("jmin")
        if jmin is not None and jmax <= jmin:
            raise ValueError(f"Jmax ({jmax}) must be greater than Jmin ({jmin})")
        return jmax

    @field_validator("s2")
    @classmethod
    def _sizes_differ(cls, s2: int, info: ValidationInfo) -> int:
        s1 = info.data.get("s1")
        if s1 is not None and AWG_INIT_SIZE + s1 == AWG_RESPONSE_SIZE + s2:
            raise ValueError(
                f"S1 + {AWG_INIT_SIZE - AWG_RESPONSE_SIZE} equals S2 ({s1} + "
                f"{AWG_INIT_SIZE - AWG_RESPONSE_SIZE} = {s2}): padded initiation and response "
                "would have the same size and the receiver could not tell them apart; "
                "change S2")
        return s2

    @field_validator("h2", "h3", "h4")
    @classmethod
    def _headers_distinct(cls, value: int, info: ValidationInfo) -> int:
        for other in ("h1", "h2", "h3")[: int(str(info.field_name)[1]) - 1]:
            if info.data.get(other) == value:
                raise ValueError(f"{str(info.field_name).upper()} equals {other.upper()} "
                                 f"({value}); H1-H4 must be four different values")
        return value

    def config_lines(self) -> tuple[tuple[str, str], ...]:
        """(key, value) in awg-quick spelling and order: the one source both the gateway's
        interface file and every customer format print."""
        return (("Jc", str(self.jc)), ("Jmin", str(self.jmin)), ("Jmax", str(self.jmax)),
                ("S1", str(self.s1)), ("S2", str(self.s2)), ("H1", str(self.h1)),
                ("H2", str(self.h2)), ("H3", str(self.h3)), ("H4", str(self.h4)))


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
