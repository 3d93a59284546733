"""The load stage's result: RepoState (the validated desired state) and its Problems."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.repo.model import Gateway, Tunnel


@dataclass(frozen=True, order=True)
class Problem:
    file: str  # repo-relative path
    line: int  # 1-based
    col: int  # 1-based
    message: str
    org: str | None = None  # the org of the file; None (gateway files) blocks every org

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class GatewayChoiceError(ValueError):
    """No gateway, an unknown one, or several without a choice."""


@dataclass(frozen=True)
class RepoState:
    gateways: Mapping[str, Gateway]
    tunnels: tuple[Tunnel, ...]  # tunnels of orgs without any problem (none if a gateway is broken)
    problems: tuple[Problem, ...] = ()
    broken_orgs: frozenset[str] = field(default_factory=frozenset)
    # Every tunnel that passed its own file's rules, broken org or not (they still occupy
    # addresses: the allocator must avoid them), and where each tunnel came from.
    all_tunnels: tuple[Tunnel, ...] = ()
    paths: Mapping[str, str] = field(default_factory=dict)  # ident "org/name" -> repo path

    @property
    def ok(self) -> bool:
        return not self.problems

    def gateway(self, name: str | None) -> Gateway:
        """The named gateway, or the only one; raises GatewayChoiceError saying what to do."""
        if name is not None:
            if name not in self.gateways:
                raise GatewayChoiceError(
                    f"gateway {name!r} is not in the repo (or its file has problems); "
                    f"known: {', '.join(sorted(self.gateways)) or 'none'}")
            return self.gateways[name]
        if len(self.gateways) == 1:
            return next(iter(self.gateways.values()))
        if not self.gateways:
            raise GatewayChoiceError("the repo has no valid gateway file; run 'tunnelctl "
                                     "validate' and fix gateway.yaml first")
        raise GatewayChoiceError(f"the repo has several gateways "
                                 f"({', '.join(sorted(self.gateways))}); choose one with --gateway")

    def for_gateway(self, name: str) -> tuple[Tunnel, ...]:
        return tuple(t for t in self.tunnels if t.gateway == name)
