"""Removing labs: from the live object, or from the state file of a lab another process built.

Only what the state file records is touched: processes proven (by /proc start time and command
line) to be the ones the lab started, namespaces carrying the lab's prefix, sockets of the lab's
own interfaces that nobody serves any more, and the lab's run directory.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from reconciler.engine.runner import UAPI_DIR, Runner

from .layout import RUN_ROOT, namespace
from .processes import LabState, stop, uapi_socket_busy


def list_namespaces() -> list[str]:
    out = Runner().run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def teardown(state: LabState, popens: Mapping[int, Any] | None = None) -> list[str]:
    """Remove everything `state` records, and only that. Returns warnings (never raises)."""
    warnings: list[str] = []
    prefix = namespace(state.name, "")
    for proc in reversed(state.processes):
        try:
            stop(proc, (popens or {}).get(proc.pid))
        except (OSError, RuntimeError) as exc:
            warnings.append(f"could not stop {proc.role} (pid {proc.pid}): {exc}")
    existing = set(list_namespaces())
    ours = [ns for ns in state.namespaces if ns in existing and ns.startswith(prefix)]
    for ns in ours:
        pids = Runner().run(["ip", "netns", "pids", ns], check=False).stdout.split()
        if pids:  # not started by the lab: left alone, the namespace goes when they exit
            warnings.append(f"namespace {ns} still has processes the lab did not start: {pids}")
    if ours:
        res = Runner().run(["ip", "-force", "-batch", "-"], check=False, write=True,
                           stdin="".join(f"netns del {ns}\n" for ns in ours))
        if res.returncode:
            warnings.append(f"deleting namespaces: {res.stderr.strip()}")
    for ifname in state.wg_interfaces:
        sock = UAPI_DIR / f"{ifname}.sock"
        if sock.exists() and not uapi_socket_busy(ifname):
            sock.unlink(missing_ok=True)
        elif sock.exists():
            warnings.append(f"{sock} is still served by a process the lab did not start")
    run_dir = Path(state.run_dir)
    if (run_dir / "lab.json").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
    return warnings


def find_labs(run_root: Path = RUN_ROOT) -> list[LabState]:
    return [LabState.load(p) for p in sorted(run_root.glob("*/lab.json"))]


class _Downable(Protocol):
    def down(self) -> None: ...


class _ActiveLabs:
    """Labs built by this process that must not outlive it: down at exit and on SIGTERM/SIGHUP."""

    def __init__(self) -> None:
        self.labs: list[_Downable] = []
        self.hooked = False

    def add(self, lab: _Downable) -> None:
        self.labs.append(lab)
        if not self.hooked:
            self.hooked = True
            atexit.register(self.down_all)
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGTERM, signal.SIGHUP):
                    if signal.getsignal(sig) is signal.SIG_DFL:
                        signal.signal(sig, _down_then_die)

    def discard(self, lab: _Downable) -> None:
        if lab in self.labs:
            self.labs.remove(lab)

    def down_all(self) -> None:
        for lab in list(self.labs):
            lab.down()


def _down_then_die(signum: int, frame: FrameType | None) -> None:
    """Remove this process's labs, then die of the same signal as if we had not been here.

    (Raising SystemExit instead would not stop pytest: it reports it as a failed test and
    carries on, which is not what a SIGTERM from CI or a user means.)
    """
    ACTIVE_LABS.down_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


ACTIVE_LABS = _ActiveLabs()
