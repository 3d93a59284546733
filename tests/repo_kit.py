"""Shared helpers for the repo/validation tests (test_repo_*.py): in-memory repos built from
the shipped tenants/ examples, deterministic keys, and problem lookups."""

from __future__ import annotations

import base64
import hashlib
import shutil
from collections.abc import Mapping
from datetime import date
from pathlib import Path

from reconciler.repo.state import Problem, RepoState, SourceFile, load_files

ROOT = Path(__file__).resolve().parent.parent
TENANTS = ROOT / "tenants"
GATEWAY_YAML = (TENANTS / "gateway.yaml").read_text()
GATEWAY_KEY = "YJZs8LdgZritEgpUMAnyB8xGXYMXCScV/v4DkPmJiyg="
TODAY = date(2026, 6, 15)


def key(seed: object, length: int = 32) -> str:
    """A deterministic WireGuard-shaped key (base64 of `length` bytes)."""
    raw = hashlib.sha256(repr(seed).encode()).digest() * 2
    return base64.b64encode(raw[:length]).decode()


def tunnel_yaml(org: str, name: str, subnet: str, *, lans: tuple[str, ...] = (),
                pubkey: str | None = None, extra: str = "", gateway: str = "cloud-1") -> str:
    """A tunnel file whose line numbers tests rely on:
    1 org, 2 name, 3 gateway, 4 public_key, 5 subnet, 6 lans:, 7.. one LAN per line."""
    lines = [f"org: {org}", f"name: {name}", f"gateway: {gateway}",
             f"public_key: {pubkey or key((org, name))}", f"subnet: {subnet}", "lans:"]
    lines += [f"  - {lan}" for lan in lans]
    if not lans:
        lines[-1] = "lans: []"
    return "\n".join(lines) + "\n" + extra


def load(files: Mapping[str, str | bytes], *, gateway: str | None = GATEWAY_YAML,
         today: date = TODAY) -> RepoState:
    """Load an in-memory repo in the direct layout (<org>/<name>.yaml + gateway.yaml)."""
    sources = [SourceFile(path, text.encode() if isinstance(text, str) else text)
               for path, text in files.items()]
    if gateway is not None:
        sources.append(SourceFile("gateway.yaml", gateway.encode()))
    return load_files(sources, today=today)


def at(state: RepoState, file: str) -> list[Problem]:
    return [p for p in state.problems if p.file == file]


def one(state: RepoState, file: str) -> Problem:
    found = at(state, file)
    assert len(found) == 1, f"expected one problem at {file}, got {found or state.problems}"
    return found[0]


def copy_project(tmp_path: Path) -> Path:
    """A copy of the project layout (tenants/ + schemas/) to break or extend; returns the
    copy's folder (its tenants/ is the config repo root)."""
    dest = tmp_path / "project"
    shutil.copytree(TENANTS, dest / "tenants")
    shutil.copytree(ROOT / "schemas", dest / "schemas")
    return dest
