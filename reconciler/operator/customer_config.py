"""Customer-side configuration for one tunnel, in the formats ops hand to customers.

Runs on the cloud host: the preshared key is derived from the host secret (reconciler.engine.psk) and is
shown only here. The gateway's private key is read only to compute its public key when
gateway.yaml lacks one; it never leaves `cloud_public_key()`.

Two production bugs of the hand-built system this project replaces shaped this module:
- every customer talks to the one cloud tunnel address (gateway.address, 10.20.0.1), whatever its
  own /30, so the cloud address is always `gateway.address.ip`, never derived from the subnet;
- the cloud's public IP in the customer's AllowedIPs makes routers (GWN7002) loop, so AllowedIPs is
  the cloud address /32 plus the gateway's routed ranges, and `customer_allowed_ips` refuses any
  set that would cover the endpoint.

IPv6 rides along only for a tunnel with subnet6 on a dual-stack gateway: the customer's ::2 of its
prefix next to its IPv4 address, and address6/128 plus routed_ranges6 next to the IPv4 AllowedIPs
(refused the same way when they cover an IPv6 endpoint). Every other tunnel gets empty IPv6
fields, so its texts are byte for byte the IPv4-only ones.

AmneziaWG parameters that differ between the two sides drop data while handshakes may still
succeed, so both sides print the gateway model's one `AmneziaWG.config_lines()`, and `render`
parses them back out of the customer text and out of the gateway's interface template and
refuses to return a text whose values differ.
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
import tempfile
from collections.abc import Callable, Sequence
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

import jinja2

from reconciler.engine import psk, wgkeys
from reconciler.engine.hoststate import InterfaceConfig, Secrets
from reconciler.engine.render import render_config
from reconciler.engine.templates import template_dir
from reconciler.operator.customer_keys import CustomerKeyError, check_belongs_to
from reconciler.repo.model import AmneziaWG, Gateway, Tunnel, TunnelStatus
from reconciler.repo.state import RepoState, load_repo

TEXT_FORMATS = ("wg-quick", "mikrotik", "gdms")
FORMATS = (*TEXT_FORMATS, "qr")
TEMPLATE_FILES = {"wg-quick": "wg-quick.conf.j2", "mikrotik": "mikrotik.rsc.j2", "gdms": "gdms.txt.j2"}
DEFAULT_SECRET_DIR = Path("/etc/tunnelctl")


class CustomerConfigError(Exception):
    """A customer config cannot be produced; the message says why and what to do."""


@dataclass(frozen=True)
class ServiceLine:
    name: str
    proto: str
    ports: str
    description: str


@dataclass(frozen=True)
class CustomerConfig:
    """Every value a customer router needs, already checked. Holds the PSK: never log it."""

    org: str
    name: str
    gateway: str
    customer_public_key: str
    customer_address: IPv4Interface  # the customer's .2 in its /30
    cloud_address: IPv4Address  # the one address every customer talks to
    cloud_public_key: str
    preshared_key: str
    endpoint: str
    endpoint_host: str
    endpoint_port: int
    allowed_ips: tuple[IPv4Network, ...]
    routed_ranges: tuple[IPv4Network, ...]
    persistent_keepalive: int
    mtu: int
    lans: tuple[IPv4Network, ...]
    services: tuple[ServiceLine, ...]
    amneziawg: AmneziaWG | None = None  # the gateway's block itself, never a copy of its values
    # IPv6: set only for a tunnel with subnet6 on a dual-stack gateway, else None / empty.
    customer_address6: IPv6Interface | None = None  # the customer's ::2 in its own prefix
    cloud_address6: IPv6Address | None = None  # the gateway's address6, the same for everyone
    allowed_ips6: tuple[IPv6Network, ...] = ()
    routed_ranges6: tuple[IPv6Network, ...] = ()
    lans6: tuple[IPv6Network, ...] = ()

    @property
    def ident(self) -> str:
        return f"{self.org}/{self.name}"

    @property
    def interface_name(self) -> str:
        """Suggested interface name on the customer router (Linux limit: 15 characters)."""
        return f"wg-{self.gateway}"[:15]

    @property
    def netmask(self) -> str:
        return str(self.customer_address.netmask)

    @property
    def peer_allowed_ips(self) -> tuple[IPv4Network | IPv6Network, ...]:
        """The cloud peer's AllowedIPs as every format lists them: IPv4 first, then IPv6."""
        return (*self.allowed_ips, *self.allowed_ips6)

    def __repr__(self) -> str:  # keep the PSK out of tracebacks and debug output
        return f"CustomerConfig({self.ident!r}, gateway={self.gateway!r})"


def _refuse_endpoint(gateway: Gateway, allowed: Sequence[IPv4Network | IPv6Network]) -> None:
    """CustomerConfigError when `allowed` covers the gateway's public endpoint (either family),
    which would route the tunnel's own packets into the tunnel."""
    try:
        endpoint_ip = ipaddress.ip_address(gateway.endpoint_host)
    except ValueError:
        return  # a DNS name: nothing to compare without resolving it
    covering = [str(n) for n in allowed if n.version == endpoint_ip.version and endpoint_ip in n]
    if covering:
        key = "routed_ranges" if endpoint_ip.version == 4 else "routed_ranges6"
        raise CustomerConfigError(
            f"gateway {gateway.name}: AllowedIPs {', '.join(covering)} would cover the "
            f"endpoint {endpoint_ip}; customer routers would loop. Remove it from "
            f"{key} in the gateway file."
        )


def customer_allowed_ips(gateway: Gateway) -> tuple[IPv4Network, ...]:
    """AllowedIPs for the cloud peer on the customer side: cloud address /32 + routed ranges.

    Raises CustomerConfigError when that set would cover the gateway's public endpoint, which
    would route the tunnel's own packets into the tunnel.
    """
    allowed = (IPv4Network(f"{gateway.address.ip}/32"), *gateway.routed_ranges)
    _refuse_endpoint(gateway, allowed)
    return allowed


def customer_allowed_ips6(gateway: Gateway) -> tuple[IPv6Network, ...]:
    """The IPv6 half: address6 /128 + routed_ranges6 (empty on an IPv4-only gateway), refused
    like the IPv4 half when it would cover an IPv6 endpoint."""
    if gateway.address6 is None:
        return ()
    allowed = (IPv6Network(f"{gateway.address6.ip}/128"), *gateway.routed_ranges6)
    _refuse_endpoint(gateway, allowed)
    return allowed


def cloud_public_key(gateway: Gateway, secret_dir: Path) -> str:
    """gateway.yaml's public_key, else the one derived from the host's private key file."""
    if gateway.public_key:
        return gateway.public_key
    key_file = secret_dir / "private.key"
    try:
        private = key_file.read_text().strip()
    except OSError as exc:
        raise CustomerConfigError(
            f"gateway {gateway.name} has no public_key in its gateway file and {key_file} "
            f"cannot be read ({exc.strerror}); run 'tunnelctl bootstrap' on the host and put the "
            "public key it prints into the gateway file"
        ) from None
    try:
        return wgkeys.public_key(private)
    except ValueError:
        raise CustomerConfigError(f"{key_file} does not hold a WireGuard private key") from None


def find_tunnel(state: RepoState, ident: str, gateway: str | None = None) -> tuple[Tunnel, Gateway]:
    """The tunnel `org/name` and its gateway, or a CustomerConfigError saying what is wrong."""
    org, sep, name = ident.partition("/")
    if not sep or not org or not name:
        raise CustomerConfigError(f"{ident!r}: give the tunnel as ORG/NAME, e.g. acme-voip/hq")
    tunnel = next((t for t in state.tunnels if t.org == org and t.name == name), None)
    if tunnel is None:
        own = [p for p in state.problems if p.org in (org, None)]
        if own:
            raise CustomerConfigError(
                f"{ident} is not usable: the repository has problems (org {org} or gateway):\n"
                + "\n".join(f"  {p}" for p in own)
            )
        known = ", ".join(sorted(t.ident for t in state.tunnels if t.org == org)) or "none"
        raise CustomerConfigError(f"no tunnel {ident} in the repository (tunnels of {org}: {known})")
    if gateway is not None and tunnel.gateway != gateway:
        raise CustomerConfigError(f"{ident} belongs to gateway {tunnel.gateway}, not {gateway}")
    if tunnel.status is not TunnelStatus.active:
        raise CustomerConfigError(
            f"{ident} is {tunnel.status.value}: the cloud does not accept this tunnel, so a "
            "customer config would not work. Set 'status: active' in its file first."
        )
    gw = state.gateways.get(tunnel.gateway)
    if gw is None:
        raise CustomerConfigError(f"{ident} names gateway {tunnel.gateway}, which has no gateway file")
    return tunnel, gw


def build(tunnel: Tunnel, gateway: Gateway, host_secret: bytes, cloud_key: str) -> CustomerConfig:
    """Pure: the customer config of an active tunnel."""
    if tunnel.status is not TunnelStatus.active:
        raise CustomerConfigError(f"{tunnel.ident} is {tunnel.status.value}")
    _host, _, port = gateway.endpoint.rpartition(":")
    names = tunnel.services if tunnel.services is not None else gateway.default_services
    services = tuple(
        ServiceLine(n, gateway.services[n].proto,
                    ",".join(str(r) for r in gateway.services[n].ports),
                    gateway.services[n].description)
        for n in names if n in gateway.services
    )
    v6 = _ipv6_part(tunnel, gateway)
    return CustomerConfig(
        org=tunnel.org,
        name=tunnel.name,
        gateway=gateway.name,
        customer_public_key=tunnel.public_key,
        customer_address=IPv4Interface(f"{tunnel.customer_address}/{tunnel.subnet.prefixlen}"),
        cloud_address=gateway.address.ip,
        cloud_public_key=cloud_key,
        preshared_key=psk.derive_psk(host_secret, tunnel.org, tunnel.name, tunnel.psk_rotation),
        endpoint=gateway.endpoint,
        endpoint_host=gateway.endpoint_host,
        endpoint_port=int(port),
        allowed_ips=customer_allowed_ips(gateway),
        routed_ranges=tuple(gateway.routed_ranges),
        persistent_keepalive=tunnel.persistent_keepalive,
        mtu=gateway.mtu,
        lans=tuple(tunnel.lans),
        services=services,
        amneziawg=gateway.amneziawg,
        customer_address6=v6.customer_address6,
        cloud_address6=v6.cloud_address6,
        allowed_ips6=v6.allowed_ips6,
        routed_ranges6=v6.routed_ranges6,
        lans6=v6.lans6,
    )


@dataclass(frozen=True)
class _Ipv6Part:
    customer_address6: IPv6Interface | None = None
    cloud_address6: IPv6Address | None = None
    allowed_ips6: tuple[IPv6Network, ...] = ()
    routed_ranges6: tuple[IPv6Network, ...] = ()
    lans6: tuple[IPv6Network, ...] = ()


def _ipv6_part(tunnel: Tunnel, gateway: Gateway) -> _Ipv6Part:
    """All IPv6 values for a tunnel with subnet6 on a dual-stack gateway, none otherwise (the
    tunnel is IPv4-only and renders as before IPv6 existed)."""
    if not gateway.dual_stack or gateway.address6 is None or tunnel.subnet6 is None \
            or tunnel.customer_address6 is None:
        return _Ipv6Part()
    return _Ipv6Part(
        customer_address6=IPv6Interface(f"{tunnel.customer_address6}/{tunnel.subnet6.prefixlen}"),
        cloud_address6=gateway.address6.ip,
        allowed_ips6=customer_allowed_ips6(gateway),
        routed_ranges6=tuple(gateway.routed_ranges6),
        lans6=tuple(tunnel.lans6),
    )


def load(repo_path: Path, ident: str, *, gateway: str | None = None,
         secret_dir: Path = DEFAULT_SECRET_DIR) -> CustomerConfig:
    """Load the repo and the host secret, and build the customer config of `ident`."""
    tunnel, gw = find_tunnel(load_repo(repo_path), ident, gateway)
    secret_file = secret_dir / "psk.secret"
    try:
        host_secret = psk.read_host_secret(secret_file)
    except FileNotFoundError:
        raise CustomerConfigError(
            f"{secret_file} does not exist: customer configs are made on the cloud host (the "
            "preshared key is derived from its secret); run there, or pass --secret-dir"
        ) from None
    except PermissionError:
        raise CustomerConfigError(f"{secret_file}: permission denied (run as root)") from None
    except ValueError as exc:
        raise CustomerConfigError(str(exc)) from None
    return build(tunnel, gw, host_secret, cloud_public_key(gw, secret_dir))


def routeros_string(value: object) -> str:
    """A RouterOS script string literal. The model already types every value that reaches the
    script; quoting and escaping here keeps a future field from becoming script syntax."""
    text = str(value)
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise CustomerConfigError(f"{text!r} cannot be written into a RouterOS script")
    escaped = "".join("\\" + ch if ch in '\\"$?' else ch for ch in text)
    return f'"{escaped}"'


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir() / "customer")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # plain-text configs, not HTML
    )
    env.filters["ros"] = routeros_string
    return env


def _step_counter() -> Callable[[], int]:
    count = 0

    def step() -> int:
        nonlocal count
        count += 1
        return count

    return step


def render(config: CustomerConfig, fmt: str, *, compact: bool = False,
           private_key: str | None = None) -> str:
    """Render one text format. `compact` drops the explanatory comments (for the QR code).

    `private_key` is the customer's own key, for this one render only (the WireGuard apps
    refuse a config without it): wg-quick only, and it must belong to the tunnel's registered
    public key. It is never stored; the returned text holds it, so treat it as a secret.
    """
    if fmt not in TEMPLATE_FILES:
        raise CustomerConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if private_key is not None:
        if fmt != "wg-quick":
            raise CustomerConfigError(f"a private key goes only into the wg-quick and qr formats, "
                                      f"not {fmt} (that router makes its own key)")
        try:
            check_belongs_to(private_key, config.customer_public_key, config.ident)
        except CustomerKeyError as exc:
            raise CustomerConfigError(str(exc)) from None
    template = _environment().get_template(TEMPLATE_FILES[fmt])
    text = template.render(c=config, compact=compact, step=_step_counter(),
                           private_key=private_key)
    _assert_endpoint_not_allowed(text, config)
    check_obfuscation_matches(text, fmt, config)
    return text


# AmneziaWG keys as every format prints them: `Key = value`, in a wg-quick section, a RouterOS
# comment or a GDMS text line.
AWG_KEYS = ("Jc", "Jmin", "Jmax", "S1", "S2", "H1", "H2", "H3", "H4")
_AWG_LINE_RE = re.compile(r"^[#\s]*(" + "|".join(AWG_KEYS) + r")\s*=\s*(\S+)\s*$")


def interface_section(text: str) -> dict[str, str]:
    """`Key = value` lines of a wg-quick/awg-quick file's [Interface] section (comments and
    other sections ignored), as awg-quick reads them. A key given twice is an error there, so
    it is one here."""
    values: dict[str, str] = {}
    section = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Interface" and "=" in line:
            key, _, value = line.partition("=")
            if key.strip() in values:
                raise ValueError(f"{key.strip()} is given twice in [Interface]")
            values[key.strip()] = value.strip()
    return values


def obfuscation_values(text: str, fmt: str) -> dict[str, str]:
    """The AmneziaWG values a rendered text carries, parsed back: from [Interface] for wg-quick
    files (what awg-quick reads), from the `Key = value` lines for the formats a person reads."""
    if fmt == "wg-quick":
        return {k: v for k, v in interface_section(text).items() if k in AWG_KEYS}
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _AWG_LINE_RE.match(line)
        if m:
            if m.group(1) in out:
                raise ValueError(f"{m.group(1)} is given twice")
            out[m.group(1)] = m.group(2)
    return out


def gateway_obfuscation(amneziawg: AmneziaWG | None) -> dict[str, str]:
    """What the gateway's own interface file carries: rendered by the engine's template (no
    peers, no key) and parsed back the way awg-quick reads it."""
    iface = InterfaceConfig("gateway", 1, None, None, None, True)
    text = render_config(iface, {}, Secrets(None, {}), amneziawg)
    return {k: v for k, v in interface_section(text).items() if k in AWG_KEYS}


def check_obfuscation_matches(text: str, fmt: str, config: CustomerConfig) -> None:
    """Refuse a customer text whose AmneziaWG values differ from the gateway's: a mismatch is
    silent on the wire, so it must never leave this module."""
    try:
        customer = obfuscation_values(text, fmt)
    except ValueError as exc:
        raise CustomerConfigError(f"{config.ident} ({fmt}): {exc}; not rendered") from None
    gateway = gateway_obfuscation(config.amneziawg)
    if customer != gateway:
        raise CustomerConfigError(
            f"{config.ident} ({fmt}): the AmneziaWG values in the customer config "
            f"{customer or 'none'} differ from the gateway's {gateway or 'none'}; not rendered "
            "(the tunnel would drop data)")


_CIDR_RE = re.compile(r"[0-9A-Fa-f.:]*[.:][0-9A-Fa-f.:]*/\d{1,3}")  # IPv4 or IPv6 CIDR-shaped
_ALLOWED_MARKERS = ("allowedips", "allowed-address", "allowed ips")


def _assert_endpoint_not_allowed(text: str, config: CustomerConfig) -> None:
    """Belt and braces for the routing-loop bug: no AllowedIPs line of any format covers the
    cloud's public endpoint, IPv4 or IPv6."""
    try:
        endpoint_ip: IPv4Address | IPv6Address | None = ipaddress.ip_address(config.endpoint_host)
    except ValueError:
        endpoint_ip = None
    for line in text.splitlines():
        if not any(m in line.lower() for m in _ALLOWED_MARKERS):
            continue
        if endpoint_ip is None:
            if config.endpoint_host in line and not line.lstrip().startswith("#"):
                raise AssertionError(f"endpoint {config.endpoint_host} in AllowedIPs: {line!r}")
            continue
        for cidr in _CIDR_RE.findall(line):
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                continue  # CIDR-shaped but not an address (e.g. a time)
            if net.version == endpoint_ip.version and endpoint_ip in net:
                raise AssertionError(f"AllowedIPs covers the endpoint {endpoint_ip}: {line!r}")


@dataclass(frozen=True)
class QrCode:
    png: bytes
    terminal: str  # half-block text drawing, printable on any UTF-8 terminal


def render_qr(config: CustomerConfig, *, private_key: str | None = None) -> QrCode:
    """QR code of the compact wg-quick config, as PNG bytes and as a terminal drawing.

    The WireGuard mobile apps import only a config with a PrivateKey: pass the customer's key
    (for this render only) to make one they accept. Without it the code documents the config
    but the apps refuse it."""
    import qrcode
    from qrcode.image.pure import PyPNGImage

    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_L, border=2)
    qr.add_data(render(config, "wg-quick", compact=True, private_key=private_key))
    qr.make(fit=True)
    png = io.BytesIO()
    qr.make_image(image_factory=PyPNGImage).save(png)
    text = io.StringIO()
    qr.print_ascii(out=text, invert=True)
    return QrCode(png.getvalue(), text.getvalue())


def write_private_file(path: Path, data: bytes) -> None:
    """Write an export (it holds the PSK) readable by its owner only. A temporary file renamed
    into place: the rename replaces a symlink at `path` instead of writing through it (we may
    be root), and a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:  # mkstemp creates it 0600, O_EXCL, never a symlink
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
