"""A hand apply checks its tree against the commit the service applied."""

from __future__ import annotations

from pathlib import Path

from git_remote import git

from reconciler.service.handapply import ancestry_refusal
from reconciler.service.state import Revision, ServiceState, StateStore


def commit(repo: Path, name: str) -> str:
    (repo / name).write_text(name)
    git(repo, "add", name)
    git(repo, "commit", "-qm", name)
    return git(repo, "rev-parse", "HEAD")


def applied(state_dir: Path, sha: str) -> None:
    state_dir.mkdir(exist_ok=True)
    StateStore(state_dir).path.write_text(
        ServiceState(applied=Revision(commit=sha, at=0.0, subject="x")).model_dump_json())


def test_stale_diverged_or_foreign_trees_are_refused_current_ones_pass(tmp_path: Path) -> None:
    repo, state = tmp_path / "repo", tmp_path / "state"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    first = commit(repo, "a")
    second = commit(repo, "b")
    assert ancestry_refusal(repo, state) is None  # the service never ran here
    applied(state, first)
    assert ancestry_refusal(repo, state) is None  # ahead of the service: fine
    applied(state, second)
    assert ancestry_refusal(repo, state) is None
    git(repo, "checkout", "-q", first)
    stale = ancestry_refusal(repo, state)
    assert stale is not None and "does not contain the commit the service applied" in stale
    assert second[:12] in stale and "--force" in stale
    applied(state, "f" * 40)  # a commit this clone has never seen
    assert ancestry_refusal(repo, state) is not None
    plain = tmp_path / "plain"
    plain.mkdir()
    refusal = ancestry_refusal(plain, state)
    assert refusal is not None and "not in a git checkout" in refusal
