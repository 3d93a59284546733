"""`tunnelctl new`: add a tunnel file with the first free subnet of its gateway's pool (and, on a
dual-stack gateway, the first free IPv6 prefix of its pool6, or the one asked for).

The candidate file goes through exactly the rules `tunnelctl validate` applies (the whole repo
is loaded again with the new file in it) before anything is written, and the file is written
with ruamel round-trip formatting and a yaml-language-server schema header.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from reconciler.repo.allocate import PoolExhausted, allocate, allocate6
from reconciler.repo.crossfile import holds_subnet
from reconciler.repo.model import NAME_PATTERN, Gateway, TunnelStatus, _check_name
from reconciler.repo.state import (
    GatewayChoiceError,
    ParseCache,
    Problem,
    RepoState,
    SourceFile,
    load_files,
    scan_dir,
)
from reconciler.repo.yamlio import dump_document, write_atomic

SCHEMA_NAME = "tunnel.schema.json"


class ProvisionError(Exception):
    """The tunnel cannot be created; the message says why and what to do."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


@dataclass(frozen=True)
class NewTunnel:
    path: Path
    subnet: IPv4Network
    customer_address: str  # with prefix, what the customer's router uses
    cloud_address: str
    warnings: tuple[str, ...] = ()
    subnet6: IPv6Network | None = None  # None: IPv4 only (a gateway without IPv6)
    customer_address6: str = ""  # with prefix, like customer_address
    cloud_address6: str = ""


def tunnel_path(root: Path, org: str, name: str) -> Path:
    base = root / "tenants" if (root / "tenants").is_dir() else root
    return base / org / f"{name}.yaml"


def schema_header(root: Path, target: Path) -> str:
    """`# yaml-language-server: $schema=...` pointing from the new file's folder to the nearest
    schemas/tunnel.schema.json at or above the repo root, within its git work tree; "" when
    there is none (a modeline to a missing file only misleads the editor)."""
    for folder in (root, *root.parents):
        schema = folder / "schemas" / SCHEMA_NAME
        if schema.is_file():
            rel = Path(os.path.relpath(schema, target.parent)).as_posix()
            return f"# yaml-language-server: $schema={rel}\n"
        if (folder / ".git").exists():
            break
    return ""


def choose_gateway(state: RepoState, name: str | None) -> Gateway:
    try:
        return state.gateway(name)
    except GatewayChoiceError as exc:
        raise ProvisionError(str(exc)) from None


def used_networks(state: RepoState, gateway: str, today: date) -> list[IPv4Network]:
    """Subnets and LANs the allocator must avoid on this gateway."""
    used: list[IPv4Network] = []
    for t in state.all_tunnels:
        if t.gateway != gateway:
            continue
        if holds_subnet(t, today):
            used.append(t.subnet)
        if t.status is not TunnelStatus.revoked:
            used.extend(t.lans)
    return used


def used_networks6(state: RepoState, gateway: str, today: date) -> list[IPv6Network]:
    """IPv6 prefixes and LANs the allocator must avoid on this gateway."""
    used: list[IPv6Network] = []
    for t in state.all_tunnels:
        if t.gateway != gateway:
            continue
        if t.subnet6 is not None and holds_subnet(t, today):
            used.append(t.subnet6)
        if t.status is not TunnelStatus.revoked:
            used.extend(t.lans6)
    return used


def _pick_subnet6(state: RepoState, gw: Gateway, today: date, subnet6: str | None,
                  lans6: Sequence[str]) -> str | None:
    """The tunnel's subnet6 as text: the one asked for (the repo's rules judge it like any
    other value), the first free one on a dual-stack gateway, or None on an IPv4-only one."""
    if not gw.dual_stack:
        if subnet6 is not None or lans6:
            raise ProvisionError(f"gateway {gw.name} has no IPv6 (no address6/pool6 in its "
                                 "file): --subnet6 and --lan6 need them")
        return None
    if subnet6 is not None:
        return subnet6
    try:
        return str(allocate6(gw, used_networks6(state, gw.name, today)))
    except PoolExhausted as exc:
        raise ProvisionError(str(exc)) from None


def create_tunnel(root: Path, org: str, name: str, public_key: str, *,
                  lans: Sequence[str] = (), services: Sequence[str] | None = None,
                  gateway: str | None = None, keepalive: int = 25, notes: str = "",
                  today: date | None = None, write: bool = True,
                  subnet6: str | None = None, lans6: Sequence[str] = ()) -> NewTunnel:
    today = today or date.today()
    for label, value in (("org", org), ("name", name)):
        try:
            _check_name(value)
        except ValueError as exc:
            raise ProvisionError(f"{label}: {exc} (pattern {NAME_PATTERN})") from None
    target = tunnel_path(root, org, name)
    rel = target.relative_to(root).as_posix()
    if target.exists():
        raise ProvisionError(f"{rel} already exists; edit it instead, or pick another name")
    cache = ParseCache()
    files, _ = scan_dir(root)
    state = load_files(files, cache, today)
    if f"{org}/{name}" in state.paths:
        raise ProvisionError(f"tunnel {org}/{name} already exists in {state.paths[f'{org}/{name}']}")
    gw = choose_gateway(state, gateway)
    try:
        subnet = allocate(gw, used_networks(state, gw.name, today))
    except PoolExhausted as exc:
        raise ProvisionError(str(exc)) from None
    prefix6 = _pick_subnet6(state, gw, today, subnet6, lans6)
    values: dict[str, object] = {"org": org, "name": name, "gateway": gw.name,
                                 "public_key": public_key, "subnet": subnet, "lans": list(lans)}
    if prefix6 is not None:  # IPv6 keys only where IPv6 exists: v4-only files stay as they were
        values["subnet6"] = prefix6
        if lans6:
            values["lans6"] = list(lans6)
    values["status"] = "active"
    if services is not None:
        values["services"] = list(services)
    values.update({"persistent_keepalive": keepalive, "psk_rotation": 0})
    if notes:
        values["notes"] = notes
    header = schema_header(root, target)
    text = header + dump_document(values)
    # Same rules as `tunnelctl validate`, on the repo as it would be after writing.
    after = load_files([*files, SourceFile(rel, text.encode())], cache, today)
    mine = [p for p in after.problems if p.file == rel]
    if mine:
        raise ProvisionError("the new tunnel would not be valid; nothing was written", mine)
    if write:
        write_atomic(target, text)
    warnings: list[str] = []
    if state.problems:
        warnings.append(f"the repo has {len(state.problems)} other problem(s); files that do not "
                        "load may hold addresses this allocation could not see; run "
                        "'tunnelctl validate'")
    if not header:
        warnings.append(f"no schemas/{SCHEMA_NAME} in the repo, so no editor modeline was "
                        "written; run 'tunnelctl schema' to add the schemas")
    customer = subnet.network_address + 2
    made = NewTunnel(target, subnet, f"{customer}/{subnet.prefixlen}", str(gw.address.ip),
                     tuple(warnings))
    tunnel = next((t for t in after.all_tunnels if t.ident == f"{org}/{name}"), None)
    if tunnel is not None and tunnel.subnet6 is not None and gw.address6 is not None:
        made = replace(made, subnet6=tunnel.subnet6, cloud_address6=str(gw.address6.ip),
                       customer_address6=f"{tunnel.customer_address6}/"
                                         f"{tunnel.subnet6.prefixlen}")
    return made
