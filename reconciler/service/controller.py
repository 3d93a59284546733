"""One reconcile cycle of the service: fetch, decide what may be enforced, reconcile, record.

Level-triggered: every cycle enforces something. A new remote head is evaluated (ancestry,
signature, load with per-org holds, removal guard) and, if it passes, applied. Whatever
happens to the head, the last good state is enforced again, so drift made by hand is repaired
every cycle even while a commit is refused or the remote is away. A refused or failed commit is
evaluated again only after a back-off (or at once on an explicit trigger).

Applying a commit is a transaction with its audit entry: an intent record (the commit and its
full plan) is written durably before the first host write, the entry is derived from it, and
the intent is removed only once the entry is committed. A start first completes an intent left
by a kill: its entry, or, when the apply itself was cut short, the entry of the next apply of
that commit carries the intended plan (marked resumed), or a closing `failed` entry when the
commit was superseded or refused meanwhile.
"""

from __future__ import annotations

import gc
import logging
import time

from reconciler.engine.cycle import (
    EngineError,
    HostTarget,
    gc_paused,
    reconcile,
    select_gateway,
)
from reconciler.engine.hoststate import ObservedState
from reconciler.engine.plan import Plan
from reconciler.gitops.admission import (
    Candidate,
    Refusal,
    describe_problems,
    load_commit,
    removal_guard,
)
from reconciler.gitops.audit import AuditEntry, AuditLog
from reconciler.gitops.source import GitSource, SourceError
from reconciler.repo.state import ParseCache, RepoState
from reconciler.service.evaluate import evaluate_head
from reconciler.service.gitrecord import pin_applied, push_audit
from reconciler.service.heap import limit_arenas, trim_heap
from reconciler.service.journal import Journal, KillAfterFirstWrite, kill_step
from reconciler.service.logs import event
from reconciler.service.metrics import ServiceMetrics, TunnelStats
from reconciler.service.report import (
    CycleReport,
    cycle_phase,
    flat_summary,
    plan_summary,
    publish_cycle,
)
from reconciler.service.settings import Settings
from reconciler.service.state import (
    Attempt,
    HistoryItem,
    Intent,
    Phase,
    Revision,
    ServiceState,
    StateStore,
)
from reconciler.service.tunnels import count_by_status, gateway_interface, live_tunnel_stats

# Names other modules import from here (the loop, tests, the bench).
__all__ = ["Controller", "CycleReport", "flat_summary", "limit_arenas", "plan_summary",
           "trim_heap"]

log = logging.getLogger("tunnelctl.service")


class Controller:
    def __init__(self, settings: Settings, *, metrics: ServiceMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = StateStore(settings.state_dir)
        self.source = GitSource(settings.repo_url, settings.branch, settings.mirror_dir,
                                repo_path=settings.repo_path,
                                allowed_signers=settings.allowed_signers,
                                gnupg_home=settings.gnupg_home,
                                fetch_timeout=settings.fetch_timeout,
                                ssh_command=settings.git_ssh_command)
        self.target = HostTarget(netns=settings.netns, interface=settings.interface,
                                 secret_dir=settings.secret_dir, config_dir=settings.config_dir,
                                 lock_timeout=settings.lock_timeout, state_dir=settings.state_dir)
        self.cache = ParseCache()
        self.state: ServiceState = ServiceState()
        self.enforced: RepoState | None = None  # the last good (composite) state
        self._audit_log: AuditLog | None = None
        self.journal = Journal(self.store, settings.host, self._audit, self.audit_log,
                               kill_step())

    # -- start-up ------------------------------------------------------------------------

    def start(self) -> None:
        """Load state.json and rebuild the last good RepoState from the mirror."""
        limit_arenas()
        try:
            self.state = self.store.load()
        except ValueError as exc:
            event(log, "state_unreadable", logging.ERROR, error=str(exc))
            self.state = ServiceState()
        # Settings may have changed since the failures were recorded: look at them again.
        for failure in self.state.failures.values():
            failure.retry_at = 0.0
        self.state.pid = None
        self.journal.settle(self.applied_commit)  # before anything else
        if self.state.applied is None:
            return
        applied = self.state.applied.commit
        try:
            if not self.source.has_commit(applied):
                self.source.fetch()
            state = load_commit(self.source, applied, self.state.held_orgs, self.cache)
        except SourceError as exc:
            self.state.last_error = f"cannot rebuild the applied state {applied[:12]}: {exc}"
            event(log, "rebuild_failed", logging.ERROR, commit=applied, error=str(exc))
            return
        if not state.ok:
            self.state.last_error = (f"applied commit {applied[:12]} no longer validates: "
                                     + describe_problems(state.problems))
            event(log, "rebuild_invalid", logging.ERROR, commit=applied,
                  error=self.state.last_error)
            return
        self.enforced = state
        event(log, "rebuilt", commit=applied, tunnels=len(state.tunnels),
              held_orgs=sorted(self.state.held_orgs) or None)

    @property
    def applied_commit(self) -> str | None:
        return self.state.applied.commit if self.state.applied else None

    def gateway_name(self, repo: RepoState | None) -> str | None:
        if self.settings.gateway:
            return self.settings.gateway
        if self.state.gateway:
            return self.state.gateway
        if repo is not None:
            try:
                return select_gateway(repo, None).name
            except EngineError:
                return None
        return None

    def audit_log(self, gateway: str | None = None) -> AuditLog:
        gateway = gateway or self.gateway_name(self.enforced) or self.settings.host
        if self._audit_log is None or self._audit_log.gateway != gateway:
            self._audit_log = AuditLog(self.source, gateway, self.settings.host,
                                       push_timeout=self.settings.fetch_timeout)
        return self._audit_log

    # -- one cycle -----------------------------------------------------------------------

    def cycle(self, *, force: bool = False) -> list[CycleReport]:
        """Run one cycle; returns what happened (a refusal may come with a drift repair).

        The cyclic garbage collector is off for the whole cycle: with 16k tenants' models
        alive, the collections its allocations trigger cost ~50 ms per change cycle (one in
        a few, ~0.25 s); reference counting frees what the cycle drops, and the loop runs
        `collect_garbage` between cycles, while it waits."""
        with gc_paused():
            return self._cycle(force=force)

    def collect_garbage(self) -> None:
        """Between cycles (the loop calls it while it waits): the cyclic collector's pass
        the cycle skipped, then the C heap's free pages back to the system, so the next
        cycle's transient starts from what is really in use, not from the last peak."""
        gc.collect()
        trim_heap()

    def _cycle(self, *, force: bool) -> list[CycleReport]:
        t0 = time.monotonic()
        now = time.time()
        self.state.phase = "Reconciling"
        self.state.last_error = None  # recomputed by this cycle
        self._save()
        head = self._fetch()
        self.journal.kill_point("fetch")
        reports: list[CycleReport] = []
        if self.store.suspended() is not None:
            reports.append(CycleReport("suspended", head, "applying is suspended"))
        else:
            reports = self._reconcile(head, force=force, now=now)
        duration = time.monotonic() - t0
        reports = [CycleReport(r.result, r.commit, r.reason, duration, r.summary, r.changed)
                   for r in reports]
        self._push_audit()
        self.journal.kill_point("push")
        self.source.prune_blobs()
        self._finish(head, reports, duration, started=now)
        return reports

    def _fetch(self) -> str | None:
        head: str | None
        try:
            head = self.source.fetch()
            self.state.fetch_error = None
        except SourceError as exc:
            head = self.source.head()
            self.state.fetch_error = str(exc)
            event(log, "fetch_failed", logging.WARNING, error=str(exc))
            if self.metrics:
                self.metrics.fetch_errors.inc()
        self.state.remote_head = head
        return head

    def _reconcile(self, head: str | None, *, force: bool, now: float) -> list[CycleReport]:
        reports: list[CycleReport] = []
        applied = self.applied_commit
        evaluation: Candidate | Refusal | None = None
        self.journal.settle(applied)  # an intent whose entry could not be written yet
        pending = self.journal.pending
        if pending is not None and head is not None and head != pending.commit:
            self.journal.close(pending, f"superseded by {head[:12]} before it was finished",
                               applied)
        # A head equal to the applied commit is evaluated again only if its state could not be
        # rebuilt (e.g. after an upgrade with stricter validation).
        if head is not None and (head != applied or self.enforced is None):
            failure = self.state.failures.get(head)
            if failure is not None and now < failure.retry_at and not force:
                self.state.last_error = failure.reason  # still backing off: enforce last good
            else:
                evaluation = self._evaluate(head)
                self.journal.kill_point("evaluate")
        if isinstance(evaluation, Candidate):
            report = self._apply_candidate(evaluation, now)
            reports.append(report)
            # An applied commit went the engine's quick way (only what changed was read back):
            # the enforcement below then observes everything, so drift is repaired this cycle.
            if report.result in ("noop", "busy"):
                return reports
        elif isinstance(evaluation, Refusal):
            reports.append(self._refuse(evaluation, now))
        # Enforce the last good state (drift repair), also after a refusal or failed apply.
        if self.enforced is not None:
            reports.append(self._enforce())
        elif not reports:
            reason = self.state.last_error or "nothing applied yet"
            reports.append(CycleReport("refused" if head else "failed", head, reason))
        return reports

    def _evaluate(self, head: str) -> Candidate | Refusal:
        return evaluate_head(self.source, self.settings, self.applied_commit, head,
                             self.state.held_orgs, self.cache)

    def _apply_candidate(self, cand: Candidate, now: float) -> CycleReport:
        gateway = self.gateway_name(cand.state)
        resume = self.journal.resumes(cand.commit)
        approved = self.store.removal_approved(cand.commit)
        # A resumed intent passed the guard before the kill; what is left is part of that plan.
        guard = None if approved or resume else removal_guard(self.settings.max_removal_share,
                                                              self.settings.allow_empty)
        reason = cand.held_text()
        intents: list[Intent] = [resume] if resume else []

        def record_intent(plan: Plan, observed: ObservedState) -> str | None:
            # Called by the engine under the host lock, after planning, before any host write.
            refusal = guard(plan, observed) if guard is not None else None
            if refusal is None and not intents:
                try:
                    intents.append(self.journal.begin(self.journal.make(
                        cand.commit, self.applied_commit, gateway, plan_summary(plan),
                        cand.held, reason)))
                except OSError as exc:
                    return f"cannot record the intent before applying: {exc}"
            return refusal

        runner = KillAfterFirstWrite(netns=self.settings.netns) \
            if self.journal.kill_at == "apply" else None
        result = reconcile(cand.state, self.target, gateway=gateway, guard=record_intent,
                           quick=True, runner=runner)
        summary = flat_summary(result)
        if result.failed_step == "lock":
            self.state.last_error = result.error
            return CycleReport("busy", cand.commit, result.error or "")
        if not result.ok:
            kind = "removal" if result.failed_step == "guard" else (
                "render" if result.failed_step in ("load", "render") else "host")
            refusal = Refusal(cand.commit, kind, result.error or "apply failed")
            return self._refuse(refusal, now, summary=summary,
                                result="refused" if kind in ("removal", "render") else "failed",
                                intent=intents[0] if intents else None)
        self.journal.kill_point("verify")
        if not intents:  # an empty plan: nothing was written to the host, record it now
            intent = self.journal.make(cand.commit, self.applied_commit, gateway, summary,
                                       cand.held, reason)
            try:
                intents.append(self.journal.begin(intent))
            except OSError as exc:
                event(log, "intent_failed", logging.ERROR, error=str(exc))
                intents.append(intent)
        intent = intents[0]
        previous = self.applied_commit
        self.enforced = cand.state
        self.state.gateway = gateway
        info = self.source.commit_info(cand.commit)
        self.state.applied = Revision(commit=cand.commit, at=now, subject=info.subject)
        self.state.held_orgs = dict(cand.held)
        self.state.held_reason = reason
        self.state.failures.pop(cand.commit, None)
        self._pin(cand)
        if approved:
            self.store.clear_approval()
        self.state.attempted = Attempt(commit=cand.commit, at=now, result="applied", reason=reason)
        self._save()  # the record of what the host runs, before anything slower
        self.journal.kill_point("state")
        event(log, "applied", commit=cand.commit, previous=previous, changed=result.changed,
              held_orgs=sorted(cand.held) or None, reason=reason or None,
              resumed=resume is not None or None,
              timings={k: round(v, 4) for k, v in result.timings.items()}, **summary)
        self.journal.complete(intent, resumed=resume is not None)
        changed = result.changed or resume is not None
        return CycleReport("applied" if changed else "noop", cand.commit, reason,
                           summary=dict(intent.summary), changed=changed)

    def _refuse(self, refusal: Refusal, now: float, *, summary: dict[str, int] | None = None,
                result: str = "refused", intent: Intent | None = None) -> CycleReport:
        previous = self.state.failures.get(refusal.commit)
        self.state.fail(refusal.commit, result, refusal.reason, base=self.settings.interval,
                        cap=self.settings.retry_max, now=now)
        self.state.attempted = Attempt(commit=refusal.commit, at=now, result=result,
                                       reason=refusal.reason)
        self.state.last_error = refusal.reason
        event(log, result, logging.WARNING, commit=refusal.commit, kind=refusal.kind,
              reason=refusal.reason)
        resumed = intent is None and self.journal.resumes(refusal.commit) is not None
        if resumed:
            intent = self.journal.pending
        # One entry per commit and reason: a commit refused every back-off step is not
        # re-audited; an intent (the host may have been written) is always closed by an entry.
        if intent is not None or previous is None or previous.reason != refusal.reason \
                or result == "failed":
            entry = AuditEntry(
                time=AuditEntry.now(), host=self.settings.host,
                gateway=self.gateway_name(self.enforced) or "", result=result,
                commit=refusal.commit, applied_commit=self.applied_commit,
                reason=refusal.reason, summary=summary or {},
                intent=intent.id if intent else "", resumed=resumed)
            if intent is None:
                self._audit(entry)
            else:
                self.journal.close(intent, refusal.reason, self.applied_commit, entry)
        return CycleReport(result, refusal.commit, refusal.reason, summary=summary or {})

    def _enforce(self) -> CycleReport:
        assert self.enforced is not None
        gateway = self.gateway_name(self.enforced)
        result = reconcile(self.enforced, self.target, gateway=gateway)
        summary = flat_summary(result)
        commit = self.applied_commit
        if result.failed_step == "lock":
            self.state.last_error = result.error
            return CycleReport("busy", commit, result.error or "")
        if not result.ok:
            self.state.last_error = f"drift repair failed at {result.failed_step}: {result.error}"
            event(log, "repair_failed", logging.ERROR, commit=commit, step=result.failed_step,
                  error=result.error, **summary)
            self._audit(AuditEntry(time=AuditEntry.now(), host=self.settings.host,
                                   gateway=gateway or "", result="failed", commit=commit,
                                   applied_commit=commit, reason=self.state.last_error,
                                   summary=summary))
            return CycleReport("failed", commit, self.state.last_error, summary=summary)
        if not result.changed:
            return CycleReport("noop", commit)
        if self.metrics:
            self.metrics.drift_repairs.inc()
        reason = "repaired drift made outside git"
        event(log, "repaired", commit=commit, **summary)
        self._audit(AuditEntry(time=AuditEntry.now(), host=self.settings.host,
                               gateway=gateway or "", result="repaired", commit=commit,
                               applied_commit=commit, reason=reason, summary=summary))
        return CycleReport("repaired", commit, reason, summary=summary, changed=True)

    # -- bookkeeping ---------------------------------------------------------------------

    def _pin(self, cand: Candidate) -> None:
        pin_applied(self.source, cand.commit, cand.held)

    def _audit(self, entry: AuditEntry) -> bool:
        try:
            self.audit_log(entry.gateway or None).append(entry)
        except SourceError as exc:
            event(log, "audit_commit_failed", logging.ERROR, error=str(exc))
            return False
        return True

    def _push_audit(self) -> None:
        push_audit(self.audit_log(), self.state)

    def _finish(self, head: str | None, reports: list[CycleReport], duration: float, *,
                started: float) -> None:
        main = reports[0] if reports else CycleReport("noop", head)
        failed = any(r.result in ("failed", "busy") for r in reports)
        self.state.phase, self.state.message = self.phase(head, failed=failed)
        self.state.record(HistoryItem(time=time.time(), started=started, result=main.result,
                                      commit=main.commit,
                                      reason=main.reason[:500], duration=round(duration, 3),
                                      summary=main.summary))
        self._save()
        if self.metrics:
            publish_cycle(self.metrics, self.state, main, duration, head=head,
                          applied=self.applied_commit, tunnel_counts=self.tunnel_counts)
        event(log, "cycle", result=main.result, commit=main.commit, phase=self.state.phase,
              duration=round(duration, 3), **main.summary)

    def phase(self, head: str | None, *, failed: bool = False) -> tuple[Phase, str]:
        """Flux-style status word and the sentence behind it."""
        return cycle_phase(self.state, suspended=self.store.suspended() is not None,
                           enforcing=self.enforced is not None, applied=self.applied_commit,
                           head=head, failed=failed)

    def _save(self) -> None:
        self.store.save(self.state)

    # -- read side for metrics/status ----------------------------------------------------

    def tunnel_counts(self) -> dict[str, int]:
        return count_by_status(self.enforced, self.gateway_name(self.enforced))

    def interface(self) -> str | None:
        if self.settings.interface:
            return self.settings.interface
        return gateway_interface(self.enforced, self.gateway_name(self.enforced))

    def tunnel_stats(self) -> list[TunnelStats]:
        """Live counters of the enforced tunnels (for the metrics exporter)."""
        return live_tunnel_stats(self.settings.netns, self.interface(), self.enforced)
