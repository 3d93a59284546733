"""The service's guards for `tunnelctl apply` run by hand.

A stale clone on an operator's laptop or a host must not undo what the service enforces: give
LANs back to their previous owners, resurrect revoked peers, or delete every peer. So a hand
apply, like the service, refuses a tree that does not descend from the commit the service
applied, and a plan that removes more than the configured share of tunnels. Both are
overridden only by an explicit flag.
"""

from __future__ import annotations

from pathlib import Path

import git

from reconciler.engine.hostroutes import PlanGuard
from reconciler.gitops.admission import removal_guard
from reconciler.service.settings import Settings
from reconciler.service.state import StateStore


def ancestry_refusal(repo_path: Path, state_dir: Path) -> str | None:
    """Why the checkout holding `repo_path` may not be applied by hand, or None. No service
    state (the service never ran here) means nothing to protect."""
    applied = StateStore(state_dir).load().applied
    if applied is None:
        return None
    commit = applied.commit
    try:
        repo = git.Repo(repo_path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return (f"{repo_path} is not in a git checkout, so it cannot be checked against the "
                f"commit the service applied ({commit[:12]}); apply from a clone of the config "
                "repo, or pass --force")
    try:
        head_commit = repo.head.commit
    except ValueError:  # a repository without commits
        return f"{repo_path} is in a git repository without commits; commit first, or pass --force"
    head = head_commit.hexsha
    try:
        ok = repo.is_ancestor(repo.commit(commit), head_commit)
    except (ValueError, git.BadName, git.GitCommandError):  # the applied commit is unknown here
        ok = False
    if ok:
        return None
    return (f"this checkout (HEAD {head[:12]}) does not contain the commit the service applied "
            f"({commit[:12]} {applied.subject!r}); applying it would undo newer changes. "
            "`git pull` first, or pass --force to apply this tree anyway")


def hand_apply_guard(settings: Settings) -> PlanGuard:
    """The service's removal guard, with the service's own settings."""
    return removal_guard(settings.max_removal_share, settings.allow_empty)
