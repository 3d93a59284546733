"""Which desired state a cycle may enforce: per-org holds and the removal guard.

One org's broken file must not block the others: the valid orgs of a new commit are taken
from it, each broken org keeps the files of the commit it was last good at ("held"). The
combined file set is validated again as a whole (a held org's old subnet might now be taken by
another org), so what reaches the engine has passed every cross-file rule.

Blame follows change: a conflict between two files is reported at both, but an org whose files
in it are byte-identical to what the host enforces did not cause it and is not held when the
other side changed (it keeps applying its other changes); when both sides changed, or neither
did, both orgs are held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from reconciler.engine.hoststate import ObservedState
from reconciler.engine.plan import Plan, RemovePeer
from reconciler.gitops.source import GitSource, org_of
from reconciler.repo.crossfile import conflict_partner
from reconciler.repo.state import ParseCache, Problem, RepoState, SourceFile, load_files

MAX_HOLD_ROUNDS = 4


@dataclass(frozen=True)
class Candidate:
    """A commit that may be applied: `state` is problem-free."""

    commit: str
    state: RepoState
    held: Mapping[str, str | None] = field(default_factory=dict)  # org -> commit (None: left out)
    broken: tuple[Problem, ...] = ()  # why the held orgs are held (problems at `commit`)
    # org -> who caused its conflicts: "C/x.yaml is new; conflicts with A/a.yaml (unchanged)"
    blame: Mapping[str, str] = field(default_factory=dict)
    spared: tuple[str, ...] = ()  # orgs in a conflict that are not held: their side is unchanged

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
            cause = f" ({self.blame[org]})" if org in self.blame else ""
            parts.append(f"org {org} {at}{cause}: " + "; ".join(why[:3]) + more)
        if self.spared:
            parts.append(f"not held: {', '.join(self.spared)} (their side of the conflict is "
                         "unchanged since the applied commit)")
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
    side = change_of(source, commit, applied, held)
    spared, blame = assign_blame(loaded.problems, side)
    holds = hold_orgs(loaded.broken_orgs - spared, applied, held)
    problems = list(loaded.problems)
    for _ in range(MAX_HOLD_ROUNDS):
        composite = load_commit(source, commit, holds, cache)
        if composite.ok:
            return Candidate(commit, composite, holds, tuple(problems),
                             {o: b for o, b in blame.items() if o in holds},
                             tuple(sorted(spared - holds.keys())))
        new = composite.broken_orgs - holds.keys()
        if any(p.org is None for p in composite.problems) or not new:
            return Refusal(commit, "conflict", "broken orgs could not be kept at their last good "
                           "state without conflicts: " + describe_problems(composite.problems))
        # Conflicts with a held org's older files: whoever else is in them is held too.
        problems += [p for p in composite.problems if p.org in new]
        blame.update({o: b for o, b in assign_blame(composite.problems, side)[1].items()
                      if o in new})
        holds.update(hold_orgs(new, applied, held))
    return Refusal(commit, "conflict", "too many orgs conflict with held orgs: "
                   + describe_problems(loaded.problems))


def change_of(source: GitSource, commit: str, applied: str | None,
              held: Mapping[str, str | None]) -> Callable[[str], str]:
    """path -> "new" | "changed" | "unchanged": `commit`'s file against what the host
    enforces (the applied commit, held orgs at their commits). Nothing applied: all new."""
    base = {f.path: f.blob_id for f in compose_files(source, applied, held)} if applied else {}
    now = {f.path: f.blob_id for f in source.files(commit)}

    def side(path: str) -> str:
        if path not in base:
            return "new"
        return "unchanged" if base[path] == now.get(path) else "changed"

    return side


def assign_blame(problems: Iterable[Problem],
                 side: Callable[[str], str]) -> tuple[frozenset[str], dict[str, str]]:
    """Orgs spared (every problem of theirs is a conflict between an unchanged file of theirs
    and a changed one), and for every org in a conflict a sentence saying which side is new."""
    by_org: dict[str, list[Problem]] = {}
    for p in problems:
        if p.org is not None:
            by_org.setdefault(p.org, []).append(p)
    spared: set[str] = set()
    blame: dict[str, str] = {}
    for org, probs in sorted(by_org.items()):
        innocent, notes = True, []
        for p in probs:
            other = conflict_partner(p.message)
            mine, theirs = side(p.file), (side(other) if other else None)
            if other is None or mine != "unchanged" or theirs == "unchanged":
                innocent = False
            if other is not None:
                note = f"{p.file} is {mine}; conflicts with {other} ({theirs})"
                if note not in notes:
                    notes.append(note)
        if innocent:
            spared.add(org)
        if notes:
            blame[org] = "; ".join(notes[:3]) + (f" (+{len(notes) - 3} more)"
                                                 if len(notes) > 3 else "")
    return frozenset(spared), blame


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
