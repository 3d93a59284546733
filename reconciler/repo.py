"""Load stage: config repository files -> RepoState (validated desired state + problems).

PROVISIONAL minimal version (no line/column positions, no cross-file rules yet). The
repo/validation work replaces the internals; the public API below stays:

    load_repo(path) -> RepoState
    RepoState.gateways / .tunnels / .problems / .broken_orgs / .ok
    Problem(file, line, col, message, org)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError
from ruamel.yaml import YAML

from .model import Gateway, Tunnel


@dataclass(frozen=True, order=True)
class Problem:
    file: str  # repo-relative path
    line: int  # 1-based
    col: int  # 1-based
    message: str
    org: str | None = None  # set when the problem belongs to one org (lets other orgs proceed)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


@dataclass(frozen=True)
class RepoState:
    gateways: Mapping[str, Gateway]
    tunnels: tuple[Tunnel, ...]  # only tunnels that passed every rule
    problems: tuple[Problem, ...] = ()
    broken_orgs: frozenset[str] = field(default_factory=frozenset)

    @property
    def ok(self) -> bool:
        return not self.problems

    def for_gateway(self, name: str) -> tuple[Tunnel, ...]:
        return tuple(t for t in self.tunnels if t.gateway == name)


def load_repo(path: Path | str) -> RepoState:
    root = Path(path)
    yaml = YAML(typ="safe")
    gateways: dict[str, Gateway] = {}
    tunnels: list[Tunnel] = []
    problems: list[Problem] = []
    gw_files = [root / "gateway.yaml"] if (root / "gateway.yaml").exists() else sorted((root / "gateways").glob("*.yaml"))
    for f in gw_files:
        try:
            gw = Gateway.model_validate(yaml.load(f.read_text()))
            gateways[gw.name] = gw
        except (ValidationError, Exception) as exc:  # provisional
            problems.append(Problem(str(f.relative_to(root)), 1, 1, str(exc)))
    org_root = root / "tenants" if (root / "tenants").is_dir() else root
    for f in sorted(org_root.glob("*/*.yaml")):
        if f.parent.name in ("gateways", "schemas"):
            continue
        try:
            tunnels.append(Tunnel.model_validate(yaml.load(f.read_text())))
        except (ValidationError, Exception) as exc:  # provisional
            problems.append(Problem(str(f.relative_to(root)), 1, 1, str(exc), org=f.parent.name))
    return RepoState(gateways, tuple(tunnels), tuple(problems),
                     frozenset(p.org for p in problems if p.org))
