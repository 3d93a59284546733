"""The intent record: an applied commit's entry is written exactly once, whenever the kill."""

from __future__ import annotations

from pathlib import Path

import pytest
from git_remote import ConfigRemote

from reconciler.gitops.audit import AuditEntry, AuditLog
from reconciler.gitops.source import GitSource
from reconciler.service.journal import KILL_ENV, Journal, kill_step
from reconciler.service.state import StateStore

A, B = "a" * 40, "b" * 40


def make(tmp_path: Path) -> tuple[Journal, AuditLog, StateStore]:
    remote = ConfigRemote(tmp_path / "r")
    remote.commit({"gateway.yaml": "name: cloud-1\n"}, "ops change")
    src = GitSource(str(remote.bare), remote.branch, tmp_path / "mirror.git")
    src.fetch()
    audit = AuditLog(src, "cloud-1", "h1")
    store = StateStore(tmp_path / "state")

    def append(entry: AuditEntry) -> bool:
        audit.append(entry)
        return True

    return Journal(store, "h1", append, lambda _gw: audit, None), audit, store


def test_kill_hook_is_inert_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KILL_ENV, raising=False)
    assert kill_step() is None
    monkeypatch.setenv(KILL_ENV, "nonsense")
    assert kill_step() is None
    monkeypatch.setenv(KILL_ENV, "state")
    assert kill_step() == "state"


def test_intent_of_an_applied_commit_is_completed_once_at_start(tmp_path: Path) -> None:
    journal, audit, store = make(tmp_path)
    intent = journal.begin(journal.make(B, A, "cloud-1", {"peers_remove": 100}, {}, ""))
    assert store.load_intent() == intent
    # Killed after state.json said B: the next start writes B's entry with the whole plan.
    restarted = Journal(store, "h1", journal.append, journal.audit_log, None)
    restarted.settle(B)
    (entry,) = audit.entries()
    assert (entry.result, entry.commit, entry.intent, entry.resumed) == ("applied", B, intent.id,
                                                                         True)
    assert entry.summary == {"peers_remove": 100}
    assert "finished after a restart" in entry.subject()
    assert store.load_intent() is None
    # Killed after the entry but before the intent went: never written twice.
    store.save_intent(intent)
    again = Journal(store, "h1", journal.append, journal.audit_log, None)
    again.settle(B)
    assert len(audit.entries()) == 1 and store.load_intent() is None


def test_interrupted_apply_is_kept_for_the_next_apply_or_closed(tmp_path: Path) -> None:
    journal, audit, store = make(tmp_path)
    intent = journal.begin(journal.make(B, A, "cloud-1", {"config_change": 1,
                                                          "peers_remove": 100}, {}, ""))
    restarted = Journal(store, "h1", journal.append, journal.audit_log, None)
    restarted.settle(A)  # state.json still says A: the apply itself was cut short
    assert audit.entries() == [] and restarted.resumes(B) == intent
    assert restarted.resumes(A) is None
    # The next apply of B finishes it: the entry has the intended plan, not the remainder.
    restarted.complete(intent, resumed=True)
    (entry,) = audit.entries()
    assert entry.summary == {"config_change": 1, "peers_remove": 100} and entry.resumed
    # A head that moved on closes an interrupted intent with a failed entry instead.
    other = restarted.begin(restarted.make(A, B, "cloud-1", {"peers_add": 1}, {}, ""))
    third = Journal(store, "h1", journal.append, journal.audit_log, None)
    third.settle(B)
    assert third.pending == other
    third.close(other, "superseded by cccccccccccc before it was finished", B)
    last = audit.entries()[-1]
    assert last.result == "failed" and last.intent == other.id and "interrupted" in last.reason
    assert store.load_intent() is None and third.pending is None


_MDWE_CHILD = """
import ctypes, sys
from pathlib import Path
libc = ctypes.CDLL(None, use_errno=True)
# PR_SET_MDWE(PR_MDWE_REFUSE_EXEC_GAIN): what the unit's MemoryDenyWriteExecute=yes sets;
# inherited by git, whose PCRE2 JIT then cannot map executable memory.
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(77)
from reconciler.gitops.audit import AuditLog
from reconciler.gitops.source import GitSource
src = GitSource(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
audit = AuditLog(src, "cloud-1", "h1")
print(audit.has_intent(sys.argv[4]), audit.has_intent("0" * 32))
"""


def test_has_intent_works_without_writable_executable_memory(tmp_path: Path) -> None:
    """The unit runs with MemoryDenyWriteExecute: `git log --grep` (PCRE2 JIT, even for -F)
    died there, so a restart after an interrupted apply crashed (found under real systemd)."""
    import subprocess
    import sys

    journal, audit, _ = make(tmp_path)
    intent = journal.begin(journal.make(B, A, "cloud-1", {"peers_add": 1}, {}, ""))
    Journal(journal.store, "h1", journal.append, journal.audit_log, None).settle(B)
    src = audit.source
    proc = subprocess.run([sys.executable, "-c", _MDWE_CHILD, src.url, src.branch,
                           str(src.mirror_dir), intent.id], capture_output=True, text=True,
                          check=False)
    if proc.returncode == 77:
        pytest.skip("the kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False"]
