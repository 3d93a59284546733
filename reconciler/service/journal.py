"""Apply and audit as one transaction: the intent record and the entries derived from it.

Before the first host write of an apply, an intent (the commit and its full plan summary) is
written to the state directory with fsync and an atomic rename. The audit entry of the apply is
built from the intent, and the intent is removed only once that entry is committed on the local
audit branch (itself fsynced). So a kill -9 or a power cut at any point leaves either no host
change, or an intent that the next start completes:

- its commit is the applied one (the kill came after state.json): the entry is written at once;
- otherwise the apply was cut short: the next apply of that commit finishes it and its entry
  carries the intended plan, not the remainder left after the kill; if the head moved on or the
  commit is refused meanwhile, a `failed` entry closes the intent.

Entries carry the intent's id, so an entry written just before a kill is never written twice.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Mapping, Sequence

from reconciler.engine.runner import Result, Runner
from reconciler.gitops.audit import AuditEntry, AuditLog
from reconciler.service.logs import event
from reconciler.service.state import Intent, StateStore

log = logging.getLogger("tunnelctl.service")

# Test hook, not a setting: the process SIGKILLs itself right after the named step of a cycle
# (fetch, evaluate, intent, apply = after the first host write, verify, state, audit, push), so
# tests can prove the audit survives a kill at every step boundary. Unset, it does nothing.
KILL_ENV = "TUNNELCTL_TEST_KILL_AT"
KILL_STEPS = ("fetch", "evaluate", "intent", "apply", "verify", "state", "audit", "push")


def kill_step() -> str | None:
    step = os.environ.get(KILL_ENV) or None
    return step if step in KILL_STEPS else None


def kill_self(step: str) -> None:
    log.warning("test hook %s=%s: killing this process", KILL_ENV, step)
    os.kill(os.getpid(), signal.SIGKILL)


class KillAfterFirstWrite(Runner):
    """The runner of the `apply` kill point: dies right after the first host-changing call."""

    def run(self, argv: Sequence[str], *, stdin: str | bytes | None = None, check: bool = True,
            write: bool = False, timeout: float = 60.0, detach: bool = False) -> Result:
        res = super().run(argv, stdin=stdin, check=check, write=write, timeout=timeout,
                          detach=detach)
        if self.writes:
            kill_self("apply")
        return res

    def uapi(self, interface: str, request: str, *, write: bool = False) -> str:
        res = super().uapi(interface, request, write=write)
        if self.writes:
            kill_self("apply")
        return res


class Journal:
    """The pending intent and its entries. `append` commits an entry locally (False: failed,
    the intent then stays for the next try); `audit_log` gives the branch of a gateway."""

    def __init__(self, store: StateStore, host: str, append: Callable[[AuditEntry], bool],
                 audit_log: Callable[[str | None], AuditLog], kill_at: str | None) -> None:
        self.store = store
        self.host = host
        self.append = append
        self.audit_log = audit_log
        self.kill_at = kill_at
        self.pending: Intent | None = None  # left by a kill, its commit not applied yet

    def kill_point(self, step: str) -> None:
        if self.kill_at == step:
            kill_self(step)

    def resumes(self, commit: str) -> Intent | None:
        """The interrupted intent this apply of `commit` finishes, if any."""
        return self.pending if self.pending is not None and self.pending.commit == commit else None

    def make(self, commit: str, previous: str | None, gateway: str | None,
             summary: Mapping[str, int], held: Mapping[str, str | None], reason: str) -> Intent:
        return Intent(id=uuid.uuid4().hex, commit=commit, previous=previous,
                      gateway=gateway or "", host=self.host, at=time.time(),
                      summary=dict(summary), held_orgs=dict(held), reason=reason)

    def begin(self, intent: Intent) -> Intent:
        """Write the intent durably (raises OSError); called before the first host write."""
        self.store.save_intent(intent)
        event(log, "intent", commit=intent.commit, id=intent.id, **intent.summary)
        self.kill_point("intent")
        return intent

    def complete(self, intent: Intent, *, resumed: bool) -> None:
        """The applied entry, derived from the intent; then the intent goes."""
        if resumed and self._recorded(intent):
            return
        entry = AuditEntry(time=AuditEntry.now(), host=intent.host, gateway=intent.gateway,
                           result="applied", commit=intent.commit, applied_commit=intent.commit,
                           reason=intent.reason, summary=intent.summary,
                           held_orgs={k: v or "" for k, v in intent.held_orgs.items()},
                           intent=intent.id, resumed=resumed)
        if self.append(entry):
            self.kill_point("audit")
            self.clear()

    def close(self, intent: Intent, why: str, applied: str | None,
              entry: AuditEntry | None = None) -> None:
        """An interrupted (or failed) apply that will not be finished: a `failed` entry closes
        it, or `entry` when the caller has a more precise one."""
        if self._recorded(intent):
            return
        if entry is None:
            entry = AuditEntry(time=AuditEntry.now(), host=intent.host, gateway=intent.gateway,
                               result="failed", commit=intent.commit, applied_commit=applied,
                               reason=f"apply of {intent.commit[:12]} was interrupted (the "
                               f"process stopped) and not finished: {why}",
                               summary=intent.summary, intent=intent.id, resumed=True)
            event(log, "intent_closed", logging.WARNING, commit=intent.commit, reason=why)
        if self.append(entry):
            self.clear()

    def clear(self) -> None:
        self.store.clear_intent()
        self.pending = None

    def settle(self, applied: str | None) -> None:
        """Pick up an intent a kill left behind; write its entry when its commit is the
        applied one, else keep it for the cycle that applies (or supersedes) it."""
        if self.pending is None:
            try:
                self.pending = self.store.load_intent()
            except ValueError as exc:
                event(log, "intent_unreadable", logging.ERROR, error=str(exc))
                self.store.clear_intent()
                return
        pending = self.pending
        if pending is not None and pending.commit == applied:
            event(log, "intent_completed", commit=pending.commit, id=pending.id)
            self.complete(pending, resumed=True)

    def _recorded(self, intent: Intent) -> bool:
        # Killed between committing the entry and removing the intent: nothing to write again.
        if self.audit_log(intent.gateway or None).has_intent(intent.id):
            self.clear()
            return True
        return False
