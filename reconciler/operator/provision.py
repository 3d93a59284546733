"""`tunnelctl new`: add a tunnel file with the first free subnet of its gateway's pool.

The candidate file goes through exactly the rules `tunnelctl validate` applies (the whole repo
is loaded again with the new file in it) before anything is written, and the file is written
with ruamel round-trip formatting and a yaml-language-server schema header.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from ipaddress import IPv4Network
from pathlib import Path

from reconciler.repo.allocate import PoolExhausted, allocate
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


def create_tunnel(root: Path, org: str, name: str, public_key: str, *,
                  lans: Sequence[str] = (), services: Sequence[str] | None = None,
                  gateway: str | None = None, keepalive: int = 25, notes: str = "",
                  today: date | None = None, write: bool = True) -> NewTunnel:
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
    values: dict[str, object] = {"org": org, "name": name, "gateway": gw.name,
                                 "public_key": public_key, "subnet": subnet, "lans": list(lans),
                                 "status": "active"}
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
    return NewTunnel(target, subnet, f"{customer}/{subnet.prefixlen}", str(gw.address.ip),
                     tuple(warnings))
