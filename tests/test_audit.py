"""Audit commits: temporary-index commits in a bare mirror, pushes that never force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from git_remote import ConfigRemote, git

from reconciler.gitops.audit import AuditEntry, AuditLog
from reconciler.gitops.source import GitSource


@pytest.fixture()
def remote(tmp_path: Path) -> ConfigRemote:
    r = ConfigRemote(tmp_path / "r")
    r.commit({"gateway.yaml": "name: cloud-1\n"}, "ops change")
    return r


def host_log(remote: ConfigRemote, tmp_path: Path, host: str) -> AuditLog:
    src = GitSource(str(remote.bare), remote.branch, tmp_path / host / "mirror.git")
    src.fetch()
    return AuditLog(src, "cloud-1", host)


def entry(n: int, host: str = "h1", result: str = "applied", time: str = "2026-11-23T10:00:00Z"
          ) -> AuditEntry:
    return AuditEntry(time=time, host=host, gateway="cloud-1", result=result,
                      commit=f"{n:040x}", applied_commit=f"{n:040x}", reason=f"entry {n}",
                      summary={"peers_added": n, "peers_removed": 0})


def test_entry_roundtrip_and_subject() -> None:
    e = entry(3)
    assert AuditEntry.from_json(e.to_json()) == e
    assert e.day_path == "2026/11/2026-11-23.jsonl"
    assert "applied" in e.subject() and "peers_added 3" in e.subject()
    assert "peers_removed" not in e.subject()


def test_append_builds_commits_without_worktree(remote: ConfigRemote, tmp_path: Path) -> None:
    log = host_log(remote, tmp_path, "h1")
    ops_head = remote.head()
    log.append(entry(1))
    log.append(entry(2))
    log.append(entry(3, time="2026-11-24T00:00:01Z"))
    mirror = log.source.mirror_dir
    assert git(mirror, "rev-list", "--count", log.local_ref) == "3"
    tree = git(mirror, "ls-tree", "-r", "--name-only", log.local_ref).splitlines()
    assert tree == ["2026/11/2026-11-23.jsonl", "2026/11/2026-11-24.jsonl"]
    day1 = git(mirror, "show", f"{log.local_ref}:2026/11/2026-11-23.jsonl").splitlines()
    assert [json.loads(x)["reason"] for x in day1] == ["entry 1", "entry 2"]
    assert [e.reason for e in log.entries()] == ["entry 1", "entry 2", "entry 3"]
    assert git(mirror, "log", "-1", "--format=%an <%ae>", log.local_ref) == "tunnelctl on h1 <tunnelctl@h1>"
    assert not list(mirror.glob("audit-index*")), "the temporary index is removed"
    assert not (mirror / "index").exists()
    assert log.pending() == 3
    result = log.push()
    assert (result.pushed, result.pending, result.error) == (3, 0, None)
    assert [e["reason"] for e in remote.audit_entries("cloud-1")] == ["entry 1", "entry 2", "entry 3"]
    assert remote.remote_head() == ops_head, "the ops branch is never written"
    assert log.push().pushed == 0


def test_two_hosts_replay_on_non_fast_forward(remote: ConfigRemote, tmp_path: Path) -> None:
    a = host_log(remote, tmp_path, "host-a")
    b = host_log(remote, tmp_path, "host-b")
    a.append(entry(1, "host-a"))
    assert a.push().error is None
    b.append(entry(2, "host-b"))  # built without knowing a's entry
    b.append(entry(3, "host-b"))
    a.append(entry(4, "host-a"))
    assert a.push().error is None
    res = b.push()
    assert res.error is None and res.replayed and res.pending == 0
    a.append(entry(5, "host-a"))
    res_a = a.push()
    assert res_a.error is None and res_a.replayed
    got = [(e["host"], e["reason"]) for e in remote.audit_entries("cloud-1")]
    assert got == [("host-a", "entry 1"), ("host-a", "entry 4"), ("host-b", "entry 2"),
                   ("host-b", "entry 3"), ("host-a", "entry 5")]
    # History is linear: replays, no merges, and nothing was ever force-pushed.
    merges = git(remote.bare, "rev-list", "--merges", "refs/heads/audit/cloud-1")
    assert merges == ""
    assert git(remote.bare, "rev-list", "--count", "refs/heads/audit/cloud-1") == "5"


def test_entries_stay_local_while_remote_is_away(remote: ConfigRemote, tmp_path: Path) -> None:
    log = host_log(remote, tmp_path, "h1")
    away = remote.bare.with_name("away.git")
    remote.bare.rename(away)
    for n in (1, 2, 3):
        log.append(entry(n))
    res = log.push()
    assert res.error is not None and res.pending == 3 and res.pushed == 0
    away.rename(remote.bare)
    res = log.push()
    assert (res.pushed, res.pending, res.error) == (3, 0, None)
    assert len(remote.audit_entries("cloud-1")) == 3
