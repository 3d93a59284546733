"""The reconcile orchestrator: render -> observe -> plan -> snapshot -> apply -> verify.

The only function that calls the stages in order. On any failed step, any exception after
the first write (a timeout included), or when the host still differs after apply, it restores
the snapshot taken before apply and reports which step failed. A non-dry-run cycle holds an
exclusive flock per interface (in the state directory, which no service restart removes), so
the CLI and the service never apply at once; the kernel drops the lock when its holder and
the children it started are gone.

Before the first write the plan's inverse (the old values of what it changes) is written to
disk as an "apply pending" checkpoint (reconciler.engine.checkpoint); a process killed
mid-apply leaves it, and the next cycle on that interface restores it under the lock before
anything else, then converges as usual.
After every verified cycle the table it verified is persisted (reconciler.engine.hostboot),
so the boot and nftables-restart units load exactly what the service last checked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from reconciler.engine import checkpoint
from reconciler.engine import verified_cache as knownstate
from reconciler.engine.apply import ApplyTarget, StepFailed, apply_plan, prepare
from reconciler.engine.commands import Step, commands_for, split_load
from reconciler.engine.conntrack import flush_prefixes, shrunk_sources
from reconciler.engine.hostboot import persist_firewall
from reconciler.engine.hostroutes import PlanGuard, lan_owners, with_host_routes
from reconciler.engine.hoststate import HostState, ObservedState, Secrets
from reconciler.engine.interpreter import SWITCH_INTERVAL, gc_paused, prompt_threads, started
from reconciler.engine.observe import (
    InterfaceMissing,
    KnownTable,
    NotWireGuard,
    observe,
    read_snapshot,
)
from reconciler.engine.parsers import expect_peers
from reconciler.engine.plan import (
    AddPeer,
    AddRoute,
    DeleteRoute,
    Plan,
    RemovePeer,
    ReplaceFirewall,
    UpdatePeer,
    WriteConfig,
    plan,
)
from reconciler.engine.readback import (
    RoutesRead,
    changed_peers,
    committed_table,
    observe_changes,
    read_dump_early,
    read_routes_early,
)
from reconciler.engine.render import RenderError
from reconciler.engine.rollback import (
    recover,
    recover_interrupted,
    restore,
    snapshot_state,
    with_desired_secrets,
)
from reconciler.engine.runner import CommandError, Runner
from reconciler.engine.target import (
    PRIVATE_KEY_FILE,
    PSK_SECRET_FILE,
    EngineError,
    HostTarget,
    LockBusy,
    desired_state,
    host_lock,
    read_private_key,
    select_gateway,
)
from reconciler.repo.state import RepoState

# Importable from here as before the split (target, interpreter, rollback).
__all__ = [
    "PRIVATE_KEY_FILE", "PSK_SECRET_FILE", "SWITCH_INTERVAL", "EngineError", "HostTarget",
    "LockBusy", "ReconcileResult", "desired_state", "gc_paused", "host_lock", "prompt_threads",
    "read_private_key", "reconcile", "recover_interrupted", "restore", "select_gateway",
    "snapshot_state", "with_desired_secrets",
]

log = logging.getLogger("tunnelctl.engine")

@dataclass(frozen=True)
class ReconcileResult:
    plan: Plan
    applied: bool  # apply ran to the end and verify passed
    verified: bool  # the host matched the desired state when the cycle ended
    error: str | None
    failed_step: str | None  # load|render|lock|observe|guard|firewall|interface|peers|routes|config|verify
    timings: Mapping[str, float]
    writes: int  # host-changing calls, including any rollback
    rolled_back: bool = False  # the failed apply was undone and the host matches its snapshot
    # An apply a killed process left half done, restored before this cycle planned: what
    # happened ("restored" or why not), None when there was none.
    recovered: str | None = None
    observed: ObservedState | None = field(default=None, compare=False, repr=False)
    # A dry run asked for them: what apply would run. Payloads hold secrets: show redacted().
    commands: tuple[Step, ...] | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def changed(self) -> bool:
        return not self.plan.empty


# ---------------------------------------------------------------------------- reconcile


class _Clock:
    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self.last
        self.last = now

    def done(self) -> dict[str, float]:
        self.timings["total"] = time.perf_counter() - self.start
        return self.timings


def reconcile(repo: RepoState, target: HostTarget, *, gateway: str | None = None,
              dry_run: bool = False, runner: Runner | None = None,
              guard: PlanGuard | None = None, quick: bool = False,
              show_commands: bool = False) -> ReconcileResult:
    """One cycle. Never raises for host or repo problems: the result says what failed.

    A dry run with `show_commands=True` also returns the commands apply would run
    (ReconcileResult.commands); a step that could not be built is its error.

    `quick=True` lets a changed desired state be planned against the state this process
    verified last and read back piecewise (knownstate): the caller then owes the host a full
    cycle soon (the service runs one right after), since drift made by hand meanwhile is
    neither seen nor repaired by a quick cycle. Without it every cycle observes in full.
    """
    with gc_paused(), prompt_threads():
        return _reconcile(repo, target, gateway=gateway, dry_run=dry_run, runner=runner,
                          guard=guard, quick=quick, show_commands=show_commands)


def _reconcile(repo: RepoState, target: HostTarget, *, gateway: str | None,
               dry_run: bool, runner: Runner | None,
               guard: PlanGuard | None, quick: bool, show_commands: bool) -> ReconcileResult:
    runner = runner or Runner(netns=target.netns)
    writes0 = runner.writes
    clock = _Clock()
    recovered: list[str] = []

    def result(p: Plan, *, applied: bool = False, verified: bool = False, error: str | None = None,
               step: str | None = None, rolled_back: bool = False,
               observed: ObservedState | None = None,
               commands: tuple[Step, ...] | None = None) -> ReconcileResult:
        return ReconcileResult(p, applied, verified, error, step, clock.done(),
                               runner.writes - writes0, rolled_back,
                               "; ".join(recovered) or None, observed, commands)

    if repo.problems:
        first = "; ".join(str(p) for p in repo.problems[:3])
        return result(Plan(), error=f"the repo has {len(repo.problems)} problem(s), host "
                      f"left untouched: {first}", step="load")
    try:
        desired, secrets = desired_state(repo, gateway, target)
    except (EngineError, RenderError) as exc:
        return result(Plan(), error=str(exc), step="render")
    clock.lap("render")
    assert desired.interface is not None
    interface = desired.interface.name
    config_path = target.config_path(interface)
    # Whoever calls: a tenant LAN may never take over or shadow a route of the host's own.
    guard = with_host_routes(guard, runner, interface, lan_owners(repo))
    try:
        lock = nullcontext() if dry_run else host_lock(target, interface)
        with lock:
            clock.lap("lock")
            if not dry_run:
                done = recover(target, runner, interface)
                if done is not None:
                    recovered.append(done)
                    knownstate.take((runner.netns, interface, str(config_path)))
                    clock.lap("recover")
            return _cycle(desired, secrets, runner, interface, config_path, dry_run, clock, result,
                          guard, quick, show_commands, target)
    except LockBusy as exc:
        return result(Plan(), error=str(exc), step="lock")


class ResultFactory(Protocol):  # the shape of reconcile's local `result` helper
    def __call__(self, p: Plan, *, applied: bool = False, verified: bool = False,
                 error: str | None = None, step: str | None = None, rolled_back: bool = False,
                 observed: ObservedState | None = None,
                 commands: tuple[Step, ...] | None = None) -> ReconcileResult: ...


def _cycle(desired: HostState, secrets: Secrets, runner: Runner, interface: str,
           config_path: Path, dry_run: bool, clock: _Clock, result: ResultFactory,
           guard: PlanGuard | None = None, quick: bool = False,
           show_commands: bool = False, target: HostTarget | None = None) -> ReconcileResult:
    # Quick: a changed desired state is planned against the state the last cycle verified,
    # when that is recent and the plan small (see knownstate); else the host is observed in
    # full. Every verified cycle leaves what it verified for the next quick one.
    key = (runner.netns, interface, str(config_path))
    known = None if dry_run else knownstate.take(key)
    remembered = knownstate.usable(known, desired, config_path) if quick else None
    planned = plan(desired, remembered) if remembered is not None else None
    fast = remembered is not None and planned is not None and knownstate.small_change(planned)
    if remembered is not None and planned is not None and fast:
        observed, changes, full_at = remembered, planned, known.full_at if known else 0.0
    else:
        try:
            observed = observe(runner, interface, config_path=config_path)
        except (InterfaceMissing, NotWireGuard, CommandError, OSError, ValueError) as exc:
            return result(Plan(), error=str(exc), step="observe")
        full_at = time.monotonic()
        clock.lap("observe")
        changes = plan(desired, observed)
    clock.lap("plan")
    try:
        config_text = _config_text(changes, desired, secrets)
    except EngineError as exc:
        return result(changes, error=str(exc), step="render", observed=observed)
    if dry_run and show_commands and not changes.empty:
        # The very steps apply would run (same builder, same inputs); nothing is run.
        try:
            steps = commands_for(changes, interface, secrets, uapi=runner.has_uapi(interface),
                                 config_text=config_text)
        except StepFailed as exc:
            return result(changes, error=str(exc.cause), step=exc.step, observed=observed)
        return result(changes, observed=observed, commands=steps)
    if dry_run or changes.empty:
        if changes.empty and not dry_run:
            knownstate.remember(key, desired, observed, full_at)
            _persist(target, desired)
        return result(changes, verified=changes.empty, observed=observed)
    refusal = guard(changes, observed) if guard is not None else None
    if refusal is not None:
        return result(changes, error=refusal, step="guard", observed=observed)
    clock.lap("guard")  # host routes, the removal share, the service's intent record
    log.info("applying on %s: %s", interface, changes.summary_line())
    apply_target = ApplyTarget(runner, interface, secrets, config_text)
    prepared = prepare(changes, apply_target)  # a big plan's are built beside the snapshot
    try:
        snapshot = read_snapshot(runner, interface, observed, config_path, changes)
        marker = target.checkpoint_path(interface) if target is not None else None
        if marker is not None:  # before the first write: a kill from here on is recovered
            # The changed peers' keys, completed from the desired ones (a peer updated with
            # the same PSK is read without it, but a restore may have to re-add it).
            keyed = with_desired_secrets(snapshot, desired, secrets,
                                         keys=[c.old.public_key for c in changes.of(UpdatePeer)])
            checkpoint.write(marker, checkpoint.Inverse.of(changes, keyed),
                             interface=interface, netns=runner.netns, config_path=config_path)
    except (CommandError, OSError, ValueError) as exc:  # nothing changed yet: just report
        return result(changes, error=f"cannot snapshot the host before apply: {exc}",
                      step="snapshot", observed=observed)
    clock.lap("snapshot")
    failed_step, error = None, None
    after: ObservedState | None = None
    early: list[Future[str]] = []  # the read-back's dump, started after the last peer step
    early_routes: list[Future[RoutesRead] | None] = []  # quick: after the last route step
    peer_steps = bool(changes.of(RemovePeer)) + bool(changes.of(AddPeer) or changes.of(UpdatePeer))
    route_steps = bool(changes.of(DeleteRoute)) + bool(changes.of(AddRoute))
    # A quick read-back, or a big full one (a cold converge: the 16k-peer dump then runs
    # beside the route and config steps instead of after them).
    dump_early = fast or len(changes) > EXPECT_MIN_CHANGES

    def on_step(name: str) -> None:
        nonlocal peer_steps, route_steps
        if fast and name == "routes":
            route_steps -= 1
            if route_steps == 0:
                early_routes.append(read_routes_early(runner, interface, changes))
        if dump_early and name == "peers":
            peer_steps -= 1
            if peer_steps == 0:
                # Quick: only the changed peers are read back (from the control socket).
                early.append(read_dump_early(runner, interface,
                                             changed_peers(changes) if fast else None))

    flushing: Future[list[str]] | None = None
    # A big apply (a cold converge): its peers' dump lines will parse by the memo, seeded
    # while wireguard-go takes the peers (apply's `meanwhile`).
    expecting = ((lambda: expect_peers(desired.peers, secrets.psk))
                 if not fast and len(changes) > EXPECT_MIN_CHANGES else None)
    try:
        try:
            apply_plan(changes, apply_target, on_step, steps=prepared, meanwhile=expecting)
        except StepFailed as exc:
            failed_step, error = exc.step, f"{exc.cause}"
        clock.lap("apply")
        if failed_step is None:
            flushing = _flush_soon(runner, changes)  # beside verify
            try:
                dump = early[0] if early else None
                after = (observe_changes(runner, interface, changes, observed, config_path, dump,
                                         early_routes[0] if early_routes else None)
                         if fast else observe(runner, interface, config_path=config_path,
                                              table=_table_known(runner, observed, changes),
                                              early_dump=dump))
                residue = plan(desired, after)
            except Exception as exc:  # noqa: BLE001 - a timeout too: restore, then report
                residue = None
                error = f"cannot observe the host after apply: {type(exc).__name__}: {exc}"
            clock.lap("verify")
            if residue is not None and residue.empty:
                assert after is not None
                knownstate.remember(key, desired, after, full_at if fast else time.monotonic())
                _after_verified(target, desired, runner, marker, flushing)
                clock.lap("after")  # the table persisted, conntrack, the checkpoint removed
                return result(changes, applied=True, verified=True, observed=after)
            failed_step = "verify"
            if residue is not None:
                error = ("host still differs after apply: " + residue.summary_line() + " "
                         + "; ".join(residue.render_text().splitlines()[:5]))
    except Exception as exc:  # noqa: BLE001 - whatever fails after the first write restores
        failed_step = failed_step or "apply"
        error = f"{error + '; ' if error else ''}{type(exc).__name__}: {exc}"
    log.warning("apply failed at %s: %s; restoring the snapshot", failed_step, error)
    if flushing is not None:
        _flushed(flushing)  # done before the restore writes
    # Keys for every peer only now: a restore may have to re-add any (wireguard-go restarted).
    snapshot = with_desired_secrets(snapshot, desired, secrets)
    rollback_error = restore(snapshot, runner, interface, config_path,
                             fallback_firewall=target.firewall_path if target else None)
    clock.lap("rollback")
    if rollback_error:
        error = f"{error}; ROLLBACK INCOMPLETE: {rollback_error}"
    elif marker is not None:
        checkpoint.clear(marker)  # restored: nothing left for a next start to undo
    return result(changes, error=error, step=failed_step, rolled_back=rollback_error is None)


EXPECT_MIN_CHANGES = 256  # fewer: the read-back parses the few new lines in full anyway


def _table_known(runner: Runner, observed: ObservedState, changes: Plan) -> KnownTable | None:
    """After the plan loaded the table whole: the table it loaded, when the ruleset
    generation proves nobody else committed since observe (no listing of 21.8k elements at
    16k tenants); None (list it) otherwise, and for element changes, which a full verify
    lists (a quick one reads them back itself)."""
    fw = changes.of(ReplaceFirewall)
    if len(fw) != 1 or fw[0].element_delta() is not None:
        return None
    return committed_table(runner, observed.firewall, fw[0], 2 if split_load(changes) else 1)


def _persist(target: HostTarget | None, desired: HostState) -> None:
    """The verified table, persisted for the boot and nftables-restart units (only when it
    changed). A failure is logged: the host is right, only the next boot would lag."""
    if target is None or desired.firewall is None or not desired.firewall.text:
        return
    try:
        if persist_firewall(target.firewall_path, desired.firewall.text):
            log.info("persisted the table %s to %s", desired.firewall.fingerprint,
                     target.firewall_path)
    except OSError as exc:
        log.error("cannot persist the table to %s: %s", target.firewall_path, exc)


def _after_verified(target: HostTarget | None, desired: HostState, runner: Runner,
                    marker: Path | None, flushing: Future[list[str]] | None) -> None:
    """A verified apply: persist its table, wait for the conntrack entries of tenants that
    lost services or went away to be dropped, then remove the checkpoint."""
    _persist(target, desired)
    if flushing is not None:
        _flushed(flushing)
    if marker is not None:
        checkpoint.clear(marker)


def _flush_soon(runner: Runner, changes: Plan) -> Future[list[str]] | None:
    """The flows of tenants whose access the applied plan narrowed, dropped in a thread
    while verify reads the host back (~40 ms of `conntrack -D` at 16k tenants, off the
    change path). Before verify is safe: the table already refuses those flows, and should
    verify fail, the restore only lets them connect again."""
    prefixes = shrunk_sources(changes)
    if not prefixes:
        return None
    return started(lambda: flush_prefixes(runner, prefixes), "conntrack")


def _flushed(flushing: Future[list[str]]) -> None:
    try:
        failed = flushing.result()
    except Exception as exc:  # noqa: BLE001 - the host is right; only old flows linger
        failed = [f"{type(exc).__name__}: {exc}"]
    if failed:
        log.error("conntrack entries of %d prefix(es) not dropped: %s", len(failed),
                  "; ".join(failed[:3]))


def _config_text(changes: Plan, desired: HostState, secrets: Secrets) -> str | None:
    """The config file's text when the plan writes it (it holds the keys). render_host
    always renders it; rendering it again here would need the gateway (its AmneziaWG
    block), so a missing text is a bug, never silently a file without obfuscation."""
    if changes.of(WriteConfig) and desired.interface is not None:
        if secrets.config_text is None:
            raise EngineError("the rendered config file text is missing: render_host always "
                              "renders it; refusing to write a file without it")
        return secrets.config_text
    return None


