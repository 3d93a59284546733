"""Whether a new remote head may be applied: ancestry, signatures, then the load with per-org
holds (gitops.admission). The controller calls `evaluate_head` once per new head (after a
back-off for one refused before)."""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.gitops.admission import Candidate, Refusal, candidate_for
from reconciler.gitops.source import Ancestry, GitSource, SourceError
from reconciler.repo.state import ParseCache, load_files
from reconciler.service.settings import Settings


def evaluate_head(source: GitSource, settings: Settings, applied: str | None, head: str,
                  held_orgs: Mapping[str, str | None], cache: ParseCache) -> Candidate | Refusal:
    try:
        ancestry = source.ancestry(applied, head)
        if ancestry is Ancestry.rewind and not settings.accept_rewrites:
            assert applied is not None
            return Refusal(head, "rewind", f"remote {settings.branch} was rewritten: "
                           f"{head[:12]} does not descend from the applied {applied[:12]}; "
                           "keeping the applied state (set accept_rewrites to take it)")
        if settings.verify_signatures:
            for sha in commits_to_verify(source, settings, applied, head):
                reason = source.verify(sha)
                if reason is not None:
                    where = "" if sha == head else f" (between the applied commit and head {head[:12]})"
                    return Refusal(head, "signature", f"{reason}{where}; nothing applied")
        loaded = load_files(source.files(head), cache)
        return candidate_for(source, head, loaded, applied, held_orgs, cache)
    except SourceError as exc:
        return Refusal(head, "invalid", f"cannot read commit {head[:12]}: {exc}")


def commits_to_verify(source: GitSource, settings: Settings, applied: str | None,
                      head: str) -> list[str]:
    """verify = all: every commit after the applied one (head last); else the head. With
    nothing applied yet (or the applied commit not an ancestor) only the head is known."""
    if settings.verify != "all" or applied is None or applied == head \
            or not source.has_commit(applied) or not source.is_ancestor(applied, head):
        return [head]
    return source.commits_between(applied, head) or [head]
