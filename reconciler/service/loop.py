"""`tunnelctl run`: the level-triggered loop around Controller.cycle.

A cycle runs every interval, and at once on SIGHUP (also what `tunnelctl reconcile` and
`systemctl reload` send), when watchfiles sees the refs of a local remote change, or when the
host's nf_tables ruleset generation moves (a raw `nft flush ruleset`, an nftables restart, a
hand edit: the table is back within about a second instead of an interval). The loop,
and only the loop, pings the systemd watchdog: a cycle that hangs stops the pings and systemd
restarts the service. One service per state directory, enforced by an flock on
<state_dir>/locks/service.lock that also holds the pid for `tunnelctl reconcile` (not in the
runtime directory: systemd removes that when the service stops, while a process holding the
old file may still run).

Start-up order: take the service lock; restore any apply a killed process left half done
(engine checkpoints) before anything else; then load state and rebuild the applied commit;
then the first cycle, and READY=1 only after it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from reconciler.engine.cycle import recover_interrupted
from reconciler.engine.files import LockHeld, pid_lock
from reconciler.engine.nftgen import Generation
from reconciler.engine.runner import Runner
from reconciler.service.controller import Controller, CycleReport
from reconciler.service.logs import event, without_credentials
from reconciler.service.metrics import ServiceMetrics
from reconciler.service.sdnotify import Notifier
from reconciler.service.settings import Settings

log = logging.getLogger("tunnelctl.service")

LOCK_NAME = "service.lock"
FIREWALL_MIN_GAP = 1.0  # seconds between the starts of cycles woken only by the ruleset


class AlreadyRunning(RuntimeError):
    pass


# -- the service lock (one service or one-shot cycle per state) ----------------------------


def lock_path(settings: Settings) -> Path:
    return settings.state_dir / "locks" / LOCK_NAME


@contextmanager
def service_lock(settings: Settings, *, wait: float = 0.0) -> Iterator[None]:
    """Hold the service lock (waiting up to `wait` s); the file records our pid."""
    path = lock_path(settings)
    try:
        with pid_lock(path, wait=wait, poll=0.1):
            yield
    except LockHeld as exc:
        raise AlreadyRunning(f"tunnelctl already runs for {settings.state_dir} "
                             f"(pid {exc.holder}, lock {path})") from None


def running_pid(settings: Settings) -> int | None:
    """Pid of the service holding the lock, or None when nothing holds it."""
    path = lock_path(settings)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # nobody holds it
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
    finally:
        os.close(fd)


# -- triggers ------------------------------------------------------------------------------


class Triggers:
    """Coalescing wake-ups from signals and the watcher; read by the loop only."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._reasons: set[str] = set()
        self.stopping = False

    def fire(self, reason: str) -> None:
        self._reasons.add(reason)
        self._event.set()

    def stop(self) -> None:
        self.stopping = True
        self._event.set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(max(0.0, timeout))

    def take(self) -> set[str]:
        self._event.clear()
        reasons, self._reasons = self._reasons, set()
        return reasons


def local_repo_path(url: str) -> Path | None:
    """The directory to watch when the remote is on this machine, else None."""
    path = url.removeprefix("file://")
    if "://" in path or (":" in path.split("/", 1)[0] and not path.startswith("/")):
        return None  # ssh://, https://, host:path
    p = Path(path)
    return p / ".git" if (p / ".git").is_dir() else p


class RefWatcher(threading.Thread):
    """Fires a trigger when refs change under a local remote (watchfiles, inotify)."""

    def __init__(self, path: Path, triggers: Triggers, branch: str) -> None:
        super().__init__(name="ref-watcher", daemon=True)
        self.path = path
        self.branch = branch
        self.triggers = triggers
        self.stop_event = threading.Event()

    def run(self) -> None:
        import watchfiles

        # Only the ops branch: our own audit pushes to the same remote must not wake us.
        branch_ref = f"/refs/heads/{self.branch}"

        def refs_only(change: watchfiles.Change, path: str) -> bool:
            rel = path[len(str(self.path)):]
            return rel == branch_ref or rel.endswith("/packed-refs")

        while not self.stop_event.is_set():
            if not self.path.is_dir():  # remote away (moved, unmounted): look again later
                self.stop_event.wait(2.0)
                continue
            try:
                for _changes in watchfiles.watch(self.path, watch_filter=refs_only, debounce=200,
                                                 step=50, stop_event=self.stop_event,
                                                 rust_timeout=2000, yield_on_timeout=True,
                                                 raise_interrupt=False):
                    if _changes:
                        self.triggers.fire("watch")
                    if not self.path.is_dir():
                        break
            except Exception as exc:  # noqa: BLE001 - the watcher must never end the service
                event(log, "watch_failed", logging.WARNING, path=str(self.path), error=str(exc))
                self.stop_event.wait(2.0)


class FirewallWatcher(threading.Thread):
    """Fires a trigger when the namespace's nf_tables generation moves away from the one the
    last cycle started from. Any committed ruleset change by anyone moves it (see
    engine.nftgen), so a flush or an nftables restart that takes our table away gets a cycle
    at once; while the table is in place isolation holds, so this shortens the only moments
    it does not. One netlink request per poll; without the probe the interval is what repairs.
    It is paused while a cycle runs. After a cycle that wrote nothing the mark is the
    generation the cycle started from, so a change made meanwhile is not missed; after one
    that wrote it is the generation then (else every apply would wake one more cycle)."""

    POLL = 0.2  # seconds between generation reads

    def __init__(self, netns: str | None, triggers: Triggers) -> None:
        super().__init__(name="firewall-watcher", daemon=True)
        self.runner = Runner(netns=netns)
        self.triggers = triggers
        self.stop_event = threading.Event()
        self._mark: Generation | None = None
        self._lock = threading.Lock()

    def mark(self) -> None:
        """Watch for moves away from the generation as it is now."""
        gen = self.runner.nft_generation()
        with self._lock:
            self._mark = gen

    def pause(self) -> Generation | None:
        """As a cycle starts: no firing while it runs (its own writes move the generation);
        returns the generation it starts from."""
        with self._lock:
            self._mark = None
        return self.runner.nft_generation()

    def resume(self, start: Generation | None, wrote: bool) -> None:
        """After the cycle: one that wrote is the new mark; after one that wrote nothing the
        mark is where it started, so a change made meanwhile by someone else fires at once."""
        if wrote or start is None:
            self.mark()
        else:
            with self._lock:
                self._mark = start

    def run(self) -> None:
        while not self.stop_event.wait(self.POLL):
            gen = self.runner.nft_generation()
            if gen is None:  # no probe here (or a passing error): the interval repairs drift
                self.stop_event.wait(5.0)
                continue
            with self._lock:
                moved = self._mark is not None and gen != self._mark
                if moved:
                    self._mark = None  # once per change; the next cycle marks again
            if moved:
                self.triggers.fire("firewall")


# -- the loop ------------------------------------------------------------------------------


def status_line(controller: Controller) -> str:
    st = controller.state
    return f"{st.phase}: {st.message}"


class Service:
    def __init__(self, settings: Settings, *, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.triggers = Triggers()
        self.controller: Controller | None = None
        self.firewall_watcher: FirewallWatcher | None = None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.triggers.fire("signal")
        else:
            self.triggers.stop()

    def run(self) -> int:
        """Run until SIGTERM/SIGINT. Returns the process exit code."""
        s = self.settings
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        with service_lock(s, wait=60.0):
            controller = self.controller = Controller(s)
            recover(controller)
            metrics = ServiceMetrics(controller.tunnel_stats)
            controller.metrics = metrics
            if s.metrics_bind is not None:
                try:
                    host, port = metrics.serve(*s.metrics_bind)
                    controller.state.metrics_address = f"{host}:{port}"
                except OSError as exc:
                    event(log, "metrics_unavailable", logging.ERROR,
                          address=s.metrics_address, error=str(exc))
            watcher = None
            watch_path = local_repo_path(s.repo_url) if s.watch else None
            if watch_path is not None:
                watcher = RefWatcher(watch_path, self.triggers, s.branch)
                watcher.start()
            self.firewall_watcher = FirewallWatcher(s.netns, self.triggers)
            self.firewall_watcher.mark()
            self.firewall_watcher.start()
            metrics_address = controller.state.metrics_address
            controller.start()
            controller.state.pid = os.getpid()
            controller.state.metrics_address = metrics_address
            event(log, "started", pid=os.getpid(), repo=without_credentials(s.repo_url),
                  branch=s.branch, gateway=s.gateway, interval=s.interval, metrics=metrics_address,
                  watch=str(watch_path) if watch_path else None)
            try:
                self._loop(controller)
            finally:
                self.notifier.stopping()
                if watcher is not None:
                    watcher.stop_event.set()
                self.firewall_watcher.stop_event.set()
                controller.state.pid = None
                controller.state.phase = "Stalled"
                controller.state.message = "service stopped"
                controller.store.save(controller.state)
                controller.source.close()
                event(log, "stopped")
        return 0

    def _loop(self, controller: Controller) -> None:
        s = self.settings
        ready = False
        reasons: set[str] = {"start"}
        last_start = 0.0
        while not self.triggers.stopping:
            if reasons == {"firewall"}:
                # Someone else churning the ruleset must not turn the loop into a busy one.
                self.triggers.wait(last_start + FIREWALL_MIN_GAP - time.monotonic())
                reasons |= self.triggers.take()
            self.notifier.watchdog(force=True)
            last_start = time.monotonic()
            watcher = self.firewall_watcher
            start = watcher.pause() if watcher is not None else None
            reports = self._cycle(controller, reasons)
            if watcher is not None:
                # a cycle that failed may have written and rolled back: treat it as writing
                watcher.resume(start, any(r.changed or r.result == "failed" for r in reports))
            if not ready:
                self.notifier.ready(status_line(controller))
                ready = True
            else:
                self.notifier.status(status_line(controller))
            self.notifier.watchdog(force=True)
            deadline = time.monotonic() + s.interval
            controller.collect_garbage()  # what the cycle skipped, while nothing waits
            ping = (self.notifier.watchdog_interval or 2.0) / 2
            while not self.triggers.stopping:
                left = deadline - time.monotonic()
                if left <= 0 or self.triggers.wait(min(left, ping)):
                    break
                self.notifier.watchdog()
            reasons = self.triggers.take() or {"interval"}

    def _cycle(self, controller: Controller, reasons: set[str]) -> list[CycleReport]:
        # An explicit request (signal, CLI) looks at a backed-off commit again at once.
        force = bool(reasons & {"signal", "start"})
        try:
            return controller.cycle(force=force)
        except Exception as exc:  # noqa: BLE001 - one bad cycle must not end the service
            event(log, "cycle_crashed", logging.ERROR, error=f"{type(exc).__name__}: {exc}",
                  exc_info=True)
            controller.state.phase = "Stalled"
            controller.state.message = f"cycle crashed: {type(exc).__name__}: {exc}"
            controller.state.last_error = controller.state.message
            controller.store.save(controller.state)
            return []


def recover(controller: Controller) -> None:
    """Before anything else: an apply a killed process left half done is restored (the
    first cycle then converges the host as usual)."""
    try:
        done = recover_interrupted(controller.target)
    except Exception as exc:  # noqa: BLE001 - the first cycle converges the host anyway
        event(log, "recover_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
        return
    for what in done:
        event(log, "recovered", logging.WARNING, detail=what)


def run_once(settings: Settings) -> list[CycleReport]:
    """One cycle without a service (`tunnelctl reconcile` when none runs)."""
    with service_lock(settings, wait=30.0):
        controller = Controller(settings)
        recover(controller)
        controller.start()
        try:
            return controller.cycle(force=True)
        finally:
            controller.source.close()
