"""Prepare a fresh host for one gateway: key pair, PSK host secret, interface, firewall table.

Three stages, like the engine: `observe_host` reads the host (read-only commands only),
`assess` and `plan_steps` are pure and say what is missing, what conflicts and what would be
done, and `execute` runs the steps through the Runner. `--check` stops after assess, `--dry-run`
after plan_steps. Everything already present is left alone (keys are created with O_EXCL and
never overwritten), so a second run finds nothing to do and writes nothing.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from reconciler.engine import psk, wgkeys
from reconciler.engine.hostboot import DEFAULT_STATE_DIR, firewall_path, persist_firewall
from reconciler.engine.hoststate import FIREWALL_FAMILY, FIREWALL_TABLE
from reconciler.engine.nft_transactions import firewall_transaction
from reconciler.engine.render import render_firewall
from reconciler.engine.runner import CommandError, Runner
from reconciler.repo.model import Gateway

PRIVATE_KEY_FILE = "private.key"
PSK_SECRET_FILE = "psk.secret"
WIREGUARD_GO_ENV = ("GOMEMLIMIT=512MiB",)  # without it wireguard-go was seen past 1 GB (issue 3)
UAPI_DIR = Path("/var/run/wireguard")


@dataclass(frozen=True)
class BootstrapTarget:
    gateway: Gateway
    interface: str  # gateway.interface unless overridden
    secret_dir: Path
    expected_peers: frozenset[str]  # public keys of every tunnel of this gateway in the repo
    netns: str | None = None
    # Where the table is persisted for the boot unit (as the engine's HostTarget.state_root).
    state_dir: Path | None = None

    @property
    def firewall_file(self) -> Path:
        root = self.state_dir or (DEFAULT_STATE_DIR if self.netns is None
                                  else self.secret_dir.parent / "state")
        return firewall_path(root, self.netns)

    @property
    def private_key_path(self) -> Path:
        return self.secret_dir / PRIVATE_KEY_FILE

    @property
    def psk_secret_path(self) -> Path:
        return self.secret_dir / PSK_SECRET_FILE


@dataclass(frozen=True)
class SecretFile:
    path: Path
    exists: bool
    mode: int | None  # permission bits, None when absent
    valid: bool  # readable and well-formed


@dataclass(frozen=True)
class HostFacts:
    """What the host looks like, read without changing anything."""

    private_key: SecretFile
    host_public_key: str | None  # derived from private.key when valid
    psk_secret: SecretFile
    link_exists: bool  # the interface exists in the namespace
    is_wireguard: bool  # it answers `wg show`
    uapi_socket_elsewhere: bool  # a wireguard-go socket of that name serves another namespace
    listen_port: int | None
    interface_public_key: str | None  # the key the interface runs with; None = no key set
    peers: frozenset[str]
    addresses: tuple[str, ...]
    link_up: bool
    udp_ports: frozenset[int]  # UDP ports with a listening socket in the namespace
    pool_routes: tuple[str, ...]  # foreign routes overlapping the pool, "dst dev X"
    firewall_table: bool
    kernel_wireguard: bool  # `ip link add type wireguard` is expected to work


@dataclass(frozen=True)
class Finding:
    level: str  # "ok" | "missing" | "conflict" | "note"
    subject: str
    message: str


@dataclass(frozen=True)
class Step:
    description: str
    action: Callable[[Runner], None]


# ---- parsers (pure) ----------------------------------------------------------------------------


def parse_ss_udp_ports(text: str) -> frozenset[int]:
    """Local ports of `ss -H -uln` lines ("UNCONN 0 0 0.0.0.0:51821 0.0.0.0:*")."""
    ports: set[int] = set()
    for line in text.splitlines():
        cols = line.split()
        if len(cols) >= 4:
            _, _, port = cols[3].rpartition(":")
            if port.isdigit():
                ports.add(int(port))
    return frozenset(ports)


def foreign_pool_routes(routes_json: str, pool: IPv4Network, interface: str,
                        pool6: IPv6Network | None = None) -> tuple[str, ...]:
    """Routes of `ip -json route show table all` (both families) that overlap the pool, or
    pool6 on a dual-stack gateway, on another device."""
    pools = [p for p in (pool, pool6) if p is not None]
    found: list[str] = []
    for route in json.loads(routes_json or "[]"):
        dst = route.get("dst", "")
        if dst == "default" or route.get("dev") == interface:
            continue
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if any(net.version == p.version and net.overlaps(p) for p in pools):
            table = route.get("table", "main")
            found.append(f"{dst} dev {route.get('dev', '-')} table {table}")
    return tuple(found)


def parse_addresses(addr_json: str) -> tuple[tuple[str, ...], bool]:
    """Addresses ("10.20.0.1/16", "fd42:4242:1::1/48") and the UP flag from `ip -json addr
    show dev IF`; not the link-local fe80:: a tun device gets by itself."""
    links = json.loads(addr_json or "[]")
    if not links:
        return (), False
    link = links[0]
    addrs = tuple(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                  if a.get("family") == "inet"
                  or (a.get("family") == "inet6" and a.get("scope") != "link"))
    return addrs, "UP" in link.get("flags", [])


# ---- observe (read-only) -----------------------------------------------------------------------


def _secret_file(path: Path, validate: Callable[[Path], object]) -> SecretFile:
    try:
        st = path.stat()
    except FileNotFoundError:
        return SecretFile(path, False, None, False)
    try:
        validate(path)
        valid = True
    except (OSError, ValueError):
        valid = False
    return SecretFile(path, True, stat.S_IMODE(st.st_mode), valid)


def _read_private_key(path: Path) -> str:
    return wgkeys.public_key(path.read_text().strip())


def observe_host(runner: Runner, target: BootstrapTarget) -> HostFacts:
    iface = target.interface
    private_key = _secret_file(target.private_key_path, _read_private_key)
    public = _read_private_key(target.private_key_path) if private_key.valid else None
    link = runner.run(["ip", "-json", "addr", "show", "dev", iface], check=False)
    link_exists = link.returncode == 0
    addresses, up = parse_addresses(link.stdout) if link_exists else ((), False)
    socket_path = UAPI_DIR / f"{iface}.sock"
    wg = runner.run(["wg", "show", iface, "dump"], check=False) if link_exists else None
    is_wg = wg is not None and wg.returncode == 0
    listen_port: int | None = None
    iface_key: str | None = None
    peers: set[str] = set()
    if is_wg and wg is not None:
        # First dump line: private-key public-key listen-port fwmark. Only the public key and
        # port are kept; the private key is dropped here and never stored or printed.
        lines = wg.stdout.splitlines()
        if lines:
            fields = lines[0].split("\t")
            if len(fields) > 2:
                iface_key = fields[1] if fields[1] != "(none)" else None
                listen_port = int(fields[2]) if fields[2].isdigit() else None
        peers = {ln.split("\t")[0] for ln in lines[1:] if ln.strip()}
    ss = runner.run(["ss", "-H", "-uln"], check=False)
    routes = runner.run(["ip", "-json", "route", "show", "table", "all"], check=False)
    table = runner.run(["nft", "list", "table", FIREWALL_FAMILY, FIREWALL_TABLE], check=False)
    return HostFacts(
        private_key=private_key,
        host_public_key=public,
        psk_secret=_secret_file(target.psk_secret_path, psk.read_host_secret),
        link_exists=link_exists,
        is_wireguard=is_wg,
        uapi_socket_elsewhere=not link_exists and socket_path.is_socket(),
        listen_port=listen_port,
        interface_public_key=iface_key,
        peers=frozenset(peers),
        addresses=addresses,
        link_up=up,
        udp_ports=parse_ss_udp_ports(ss.stdout),
        pool_routes=foreign_pool_routes(routes.stdout, target.gateway.pool, iface,
                                        target.gateway.pool6),
        firewall_table=table.returncode == 0,
        kernel_wireguard=Path("/sys/module/wireguard").is_dir(),
    )


# ---- assess and plan (pure) --------------------------------------------------------------------


def _secret_findings(name: str, f: SecretFile) -> list[Finding]:
    if not f.exists:
        return [Finding("missing", name, f"{f.path} does not exist")]
    out: list[Finding] = []
    if f.mode != 0o600:
        out.append(Finding("conflict", name, f"{f.path} has mode {f.mode:04o}; it must be 0600 "
                           f"(fix: chmod 600 {f.path})"))
    if not f.valid:
        out.append(Finding("conflict", name, f"{f.path} exists but is not a valid {name}; it is "
                           "never overwritten: move it away or restore it"))
    if not out:
        out.append(Finding("ok", name, f"{f.path} present, mode 0600"))
    return out


def assess(facts: HostFacts, target: BootstrapTarget) -> tuple[Finding, ...]:
    gw, iface, port = target.gateway, target.interface, target.gateway.listen_port
    out = _secret_findings("private key", facts.private_key)
    out += _secret_findings("PSK host secret", facts.psk_secret)
    if facts.uapi_socket_elsewhere:
        out.append(Finding("conflict", "interface", f"{UAPI_DIR / (iface + '.sock')} already "
                           f"serves a wireguard-go {iface} in another namespace"))
    elif not facts.link_exists:
        out.append(Finding("missing", "interface", f"{iface} does not exist"))
    elif not facts.is_wireguard:
        out.append(Finding("conflict", "interface", f"{iface} exists but is not a WireGuard "
                           "interface"))
    else:
        foreign = sorted(facts.peers - target.expected_peers)
        if foreign:
            out.append(Finding("conflict", "interface", f"{iface} has {len(foreign)} peer(s) not "
                               f"in the repository: {', '.join(foreign)}"))
        else:
            out.append(Finding("ok", "interface", f"{iface} exists with {len(facts.peers)} "
                               "known peer(s)"))
        if facts.listen_port not in (port, 0, None):
            out.append(Finding("conflict", "listen port", f"{iface} listens on "
                               f"{facts.listen_port}, the gateway file says {port}"))
        if facts.interface_public_key and facts.interface_public_key != facts.host_public_key:
            out.append(Finding("conflict", "interface key", f"{iface} runs with public key "
                               f"{facts.interface_public_key}, not the one of "
                               f"{target.private_key_path} ({facts.host_public_key or 'absent'})"))
        for wanted in _addresses(gw):
            if wanted not in facts.addresses:
                out.append(Finding("missing", "address", f"{iface} lacks {wanted}"))
        if not facts.link_up:
            out.append(Finding("missing", "link", f"{iface} is down"))
    ours = facts.is_wireguard and facts.listen_port == port
    if port in facts.udp_ports and not ours:
        out.append(Finding("conflict", "listen port", f"UDP {port} is already taken by another "
                           "socket (see: ss -ulnp)"))
    for route in facts.pool_routes:
        out.append(Finding("conflict", "pool", f"the pool {gw.pool} is already routed by "
                           f"something else: {route}"))
    if not facts.firewall_table:
        out.append(Finding("missing", "firewall", f"nftables table {FIREWALL_FAMILY} "
                           f"{FIREWALL_TABLE} does not exist"))
    else:
        out.append(Finding("ok", "firewall", f"nftables table {FIREWALL_FAMILY} {FIREWALL_TABLE} "
                           "exists"))
    out.extend(_gateway_key_findings(facts, gw))
    return tuple(out)


def _gateway_key_findings(facts: HostFacts, gw: Gateway) -> list[Finding]:
    if facts.host_public_key is None:
        return []
    if gw.public_key is None:
        return [Finding("note", "gateway file", f"gateway {gw.name} has no public_key: add "
                        f"'public_key: {facts.host_public_key}'")]
    if gw.public_key != facts.host_public_key:
        return [Finding("conflict", "gateway file", f"gateway {gw.name} public_key "
                        f"{gw.public_key} does not match this host's key "
                        f"{facts.host_public_key}")]
    return [Finding("ok", "gateway file", f"gateway {gw.name} public_key matches this host")]


def conflicts(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    return tuple(f for f in findings if f.level == "conflict")


def plan_steps(facts: HostFacts, target: BootstrapTarget) -> tuple[Step, ...]:
    """Pure: the steps that make the host ready. Empty when everything is present."""
    gw, iface = target.gateway, target.interface
    steps: list[Step] = []
    if not facts.private_key.exists:
        steps.append(Step(f"generate the gateway key pair: {target.private_key_path} (0600)",
                          partial(_create_private_key, path=target.private_key_path)))
    if not facts.psk_secret.exists:
        steps.append(Step(f"generate the PSK host secret: {target.psk_secret_path} (0600)",
                          partial(_create_host_secret, path=target.psk_secret_path)))
    # The table first, persisted for the boot unit: the interface never exists without it.
    if not facts.firewall_table:
        steps.append(Step(f"create the nftables table {FIREWALL_FAMILY} {FIREWALL_TABLE} "
                          f"(tenant traffic on {iface} dropped until the first apply) and "
                          f"persist it to {target.firewall_file}",
                          partial(_load_firewall, text=render_firewall(gw, (), iface).text,
                                  path=target.firewall_file)))
    if not facts.link_exists:
        how = ("kernel WireGuard, else wireguard-go" if facts.kernel_wireguard
               else "wireguard-go: no kernel WireGuard module")
        steps.append(Step(f"create interface {iface} ({how})",
                          partial(create_interface, interface=iface)))
    if (not facts.is_wireguard or facts.listen_port != gw.listen_port
            or facts.interface_public_key is None):
        steps.append(Step(
            f"set {iface} private key (from {target.private_key_path}) and listen port "
            f"{gw.listen_port}",
            partial(_run, argv=("wg", "set", iface, "listen-port", str(gw.listen_port),
                                "private-key", str(target.private_key_path)))))
    for wanted in _addresses(gw):
        if wanted not in facts.addresses:
            steps.append(Step(f"add address {wanted} to {iface}",
                              partial(_run, argv=("ip", "addr", "add", wanted, "dev", iface))))
    if not facts.link_up:
        steps.append(Step(f"set {iface} mtu {gw.mtu} and up",
                          partial(_run, argv=("ip", "link", "set", iface, "mtu", str(gw.mtu),
                                              "up"))))
    return tuple(steps)


def _addresses(gw: Gateway) -> tuple[str, ...]:
    """The interface's addresses: address, and address6 on a dual-stack gateway."""
    return (str(gw.address),) + ((str(gw.address6),) if gw.address6 is not None else ())


def _run(runner: Runner, argv: tuple[str, ...], stdin: str | None = None) -> None:
    runner.run(argv, stdin=stdin, write=True)


def _load_firewall(runner: Runner, text: str, path: Path) -> None:
    runner.run(("nft", "-f", "-"), stdin=firewall_transaction(text), write=True)
    persist_firewall(path, text)


def firewall_text(gateway: Gateway, interface: str) -> str:
    """The engine's own table rendered for zero tenants: fail-closed (nothing from the tenant
    interface reaches the host or is forwarded) until the first apply. The transaction names
    only our table; no other table or the ruleset is touched."""
    return firewall_transaction(render_firewall(gateway, (), interface).text)


def _create_private_key(runner: Runner, path: Path) -> None:
    _create(runner, path, wgkeys.generate_private_key() + "\n")


def _create_host_secret(runner: Runner, path: Path) -> None:
    # Same format as psk.create_host_secret (base64 of SECRET_BYTES random bytes), written
    # through the runner so it is counted and never overwrites.
    _create(runner, path, base64.b64encode(os.urandom(psk.SECRET_BYTES)).decode() + "\n")


def _create(runner: Runner, path: Path, content: str) -> None:
    if not runner.create_file(path, content, 0o600):
        raise FileExistsError(f"{path} appeared while bootstrapping; it was not overwritten")


def create_interface(runner: Runner, interface: str) -> None:
    """Kernel WireGuard when the module is there, else userspace wireguard-go (this machine)."""
    res = runner.run(["ip", "link", "add", interface, "type", "wireguard"], check=False,
                     write=True)
    if res.returncode == 0:
        return
    # wireguard-go daemonises itself (stdio on /dev/null) and returns once the socket is up.
    # Detached: the daemon must neither die with us nor inherit our locks. On a systemd host
    # the interface unit (tunnelctl-interface@.service) supervises it instead.
    runner.run(["env", *WIREGUARD_GO_ENV, "wireguard-go", interface], write=True, detach=True)


# ---- orchestration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapReport:
    findings: tuple[Finding, ...]
    steps: tuple[str, ...]  # descriptions, planned (check/dry-run) or done
    executed: bool
    public_key: str | None
    error: str | None = None

    @property
    def conflicts(self) -> tuple[Finding, ...]:
        return conflicts(self.findings)


def bootstrap(target: BootstrapTarget, runner: Runner, *, check: bool = False,
              dry_run: bool = False) -> BootstrapReport:
    """Observe, assess, then (unless check/dry-run, and only without conflicts) execute."""
    facts = observe_host(runner, target)
    findings = assess(facts, target)
    steps = plan_steps(facts, target)
    descriptions = tuple(s.description for s in steps)
    if check or dry_run or conflicts(findings):
        return BootstrapReport(findings, descriptions, False, facts.host_public_key)
    error = None
    for step in steps:
        try:
            step.action(runner)
        except (CommandError, OSError) as exc:
            error = f"{step.description}: {exc}"
            break
    after = observe_host(runner, target)
    return BootstrapReport(assess(after, target), descriptions, True, after.host_public_key,
                           error)
