"""Which desired state a cycle may enforce: per-org holds and the removal guard.

One org's broken file must not block the others: the valid orgs of a new commit are taken
from it, each broken org keeps the files of the commit it was last good at ("held"). The
combined file set is validated again as a whole (a held org's old subnet might now be taken by
another org), so what reaches the engine has passed every cross-file rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from reconciler.engine.hoststate import ObservedState
from reconciler.engine.plan import Plan, RemovePeer
from reconciler.gitops.source import GitSource, org_of
from reconciler.repo.state import ParseCache, Problem, RepoState, SourceFile, load_files

MAX_HOLD_ROUNDS = 4


@dataclass(frozen=True)
class Candidate:
    """A commit that may be applied: `state` is problem-free."""

    commit: str
    state: RepoState
    held: Mapping[str, str | None] = field(default_factory=dict)  # org -> commit (None: left out)
    broken: tuple[Problem, ...] = ()  # why the held orgs are held (problems at `commit`)

    def held_text(self) -> str:
        if not self.held:
            return ""
        by_org: dict[str, list[str]] = {}
        for p in self.broken:
            by_org.setdefault(p.org or "", []).append(str(p))
        parts = []
        for org, base in sorted(self.held.items()):
            at = f"kept at {base[:12]}" if base else "left out (never applied)"
            why = by_org.get(org) or ["conflicts with the other orgs"]
            more = f" (+{len(why) - 3} more)" if len(why) > 3 else ""
            parts.append(f"org {org} {at}: " + "; ".join(why[:3]) + more)
        return "; ".join(parts)


@dataclass(frozen=True)
class Refusal:
    commit: str
    kind: str  # rewind | signature | invalid | conflict | removal | render | host
    reason: str


def hold_orgs(broken: Iterable[str], applied: str | None,
              held: Mapping[str, str | None]) -> dict[str, str | None]:
    """Where each broken org is kept: where it is already held, else at the applied commit."""
    return {org: held.get(org, applied) for org in sorted(broken)}


def compose_files(source: GitSource, commit: str,
                  holds: Mapping[str, str | None]) -> list[SourceFile]:
    """`commit`'s files, except each held org's files come from the commit it is held at."""
    files = [f for f in source.files(commit) if org_of(f.path) not in holds]
    at: dict[str, set[str]] = {}
    for org, base in holds.items():
        if base is not None:
            at.setdefault(base, set()).add(org)
    for base, orgs in sorted(at.items()):
        files += source.files(base, orgs=frozenset(orgs))
    return files


def load_commit(source: GitSource, commit: str, holds: Mapping[str, str | None],
                cache: ParseCache) -> RepoState:
    return load_files(compose_files(source, commit, holds), cache)


def describe_problems(problems: Iterable[Problem], limit: int = 5) -> str:
    items = sorted(problems)
    text = "; ".join(str(p) for p in items[:limit])
    return text + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def candidate_for(source: GitSource, commit: str, loaded: RepoState, applied: str | None,
                  held: Mapping[str, str | None], cache: ParseCache) -> Candidate | Refusal:
    """Turn a loaded commit into something applicable, holding broken orgs back."""
    if any(p.org is None for p in loaded.problems):
        blocking = [p for p in loaded.problems if p.org is None]
        return Refusal(commit, "invalid", "commit refused, nothing applied: "
                       + describe_problems(blocking))
    if loaded.ok:
        return Candidate(commit, loaded)
    holds = hold_orgs(loaded.broken_orgs, applied, held)
    for _ in range(MAX_HOLD_ROUNDS):
        composite = load_commit(source, commit, holds, cache)
        if composite.ok:
            return Candidate(commit, composite, holds, loaded.problems)
        new = composite.broken_orgs - holds.keys()
        if any(p.org is None for p in composite.problems) or not new:
            return Refusal(commit, "conflict", "broken orgs could not be kept at their last good "
                           "state without conflicts: " + describe_problems(composite.problems))
        holds.update(hold_orgs(new, applied, held))
    return Refusal(commit, "conflict", "too many orgs conflict with held orgs: "
                   + describe_problems(loaded.problems))


def removal_guard(max_share: float, allow_empty: bool) -> Callable[[Plan, ObservedState], str | None]:
    """A guard for engine.reconcile: refuse a plan removing every tenant, or too many."""

    def guard(plan: Plan, observed: ObservedState) -> str | None:
        existing = len(observed.peers)
        removed = len(plan.of(RemovePeer))
        return removal_refusal(removed, existing, max_share=max_share, allow_empty=allow_empty)

    return guard


def removal_refusal(removed: int, existing: int, *, max_share: float,
                    allow_empty: bool) -> str | None:
    if existing == 0 or removed == 0:
        return None
    if removed >= existing:
        if allow_empty:
            return None
        return (f"refused: the plan removes all {existing} tenants of this host "
                "(set allow_empty, or approve it with `tunnelctl reconcile --approve-removal`)")
    share = removed / existing
    if share > max_share:
        return (f"refused: the plan removes {removed} of {existing} tenants ({share:.0%}, more "
                f"than max_removal_share {max_share:.0%}); approve it with "
                "`tunnelctl reconcile --approve-removal` or raise max_removal_share")
    return None
