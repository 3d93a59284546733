"""Long-running lab processes (wireguard-go, probe servers, flows) and the lab's state file.

`Runner` runs short commands to completion; the lab also needs daemons that outlive one call
(and, for `tunnelctl lab up`, the CLI process itself), so they are started here, each recorded
with its pid AND kernel start time: a pid is only ever signalled after /proc proves it is still
the very process we started (same start time, same command line), never a recycled pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from reconciler.engine.runner import UAPI_DIR


class LabError(RuntimeError):
    """The lab could not be built or torn down; the message says what and how to recover."""


@dataclass(frozen=True)
class TrackedProcess:
    pid: int
    starttime: int  # /proc/<pid>/stat field 22, in clock ticks since boot
    argv: tuple[str, ...]
    role: str

    @property
    def program_argv(self) -> tuple[str, ...]:
        """The command line after `ip netns exec NS` has exec'd into the program."""
        if self.argv[:3] == ("ip", "netns", "exec"):
            return self.argv[4:]
        return self.argv

    def exists(self) -> bool:
        """This pid still belongs to the process we started (same kernel start time), alive."""
        stat = _read_stat(self.pid)
        return stat is not None and stat[1] == self.starttime and stat[0] != "Z"

    def is_running(self) -> bool:
        """True only if this pid is still the process we started, running what we started."""
        for _ in range(100):
            if not self.exists():
                return False
            try:
                raw = Path(f"/proc/{self.pid}/cmdline").read_bytes()
            except OSError:
                return False
            if raw:
                cmdline = tuple(raw.decode(errors="replace").split("\0")[:-1])
                return cmdline in (self.argv, self.program_argv)
            time.sleep(0.005)  # cmdline reads empty while `ip netns exec` is in execve
        return False


def _read_stat(pid: int) -> tuple[str, int] | None:
    """(state, starttime) of a pid, or None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = text[text.rindex(")") + 2:].split()
    return rest[0], int(rest[19])


def spawn(
    argv: Sequence[str],
    *,
    role: str,
    netns: str | None = None,
    env: Mapping[str, str] | None = None,
    output: Path | None = None,
) -> tuple[TrackedProcess, subprocess.Popen[bytes]]:
    """Start a daemon (inside `netns` when given) in its own session, output to a file."""
    full = (("ip", "netns", "exec", netns) if netns else ()) + tuple(argv)
    out = open(output, "ab") if output else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        # Own session: a Ctrl-C meant for the shell or pytest does not kill a lab that
        # `tunnelctl lab up` left running; teardown stops it explicitly.
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                env={**os.environ, **(env or {})}, start_new_session=True)
    finally:
        if output:
            out.close()  # type: ignore[union-attr]
    stat = _read_stat(proc.pid)
    if stat is None:  # exited already; keep a record that can never match a live process
        return TrackedProcess(proc.pid, -1, full, role), proc
    return TrackedProcess(proc.pid, stat[1], full, role), proc


def stop(process: TrackedProcess, popen: subprocess.Popen[bytes] | None = None,
         *, sig: int = signal.SIGTERM, timeout: float = 3.0) -> bool:
    """Stop one of our processes: `sig`, then SIGKILL after `timeout`. False if it was gone."""
    if not process.is_running():
        if popen is not None:
            popen.poll()  # reap a zombie child
        return False
    os.kill(process.pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen is not None and popen.poll() is not None:
            return True
        if popen is None and not process.is_running():
            return True
        time.sleep(0.02)
    if process.is_running():
        os.kill(process.pid, signal.SIGKILL)
    if popen is not None:
        popen.wait(timeout=5)
    return True


def wait_for(predicate_path: Path, *, timeout: float, what: str,
             alive: TrackedProcess | None = None, log: Path | None = None) -> None:
    """Wait until a socket/ready file exists; fail fast (with its log) if the process died."""
    deadline = time.monotonic() + timeout
    while not predicate_path.exists():
        if alive is not None and not alive.exists():
            detail = log.read_text(errors="replace").strip()[-2000:] if log and log.exists() else ""
            raise LabError(f"{what} exited during start-up: {detail or '(no output)'}")
        if time.monotonic() > deadline:
            raise LabError(f"{what} not ready after {timeout:.0f}s (waiting for {predicate_path})")
        time.sleep(0.01)


def uapi_socket_busy(interface: str) -> bool:
    """True when a live wireguard-go already serves /var/run/wireguard/<interface>.sock."""
    import socket

    path = UAPI_DIR / f"{interface}.sock"
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


@dataclass
class LabState:
    """Everything needed to find and remove a lab again, written to <run_dir>/lab.json."""

    name: str
    run_dir: str
    owner_pid: int  # the process that built it; a non-detached lab dies with it
    owner_starttime: int
    detached: bool  # built by `tunnelctl lab up`: meant to outlive its builder
    namespaces: list[str] = field(default_factory=list)
    wg_interfaces: list[str] = field(default_factory=list)
    processes: list[TrackedProcess] = field(default_factory=list)
    info: dict[str, object] = field(default_factory=dict)  # cloud/routers/apply command, for status

    @property
    def path(self) -> Path:
        return Path(self.run_dir) / "lab.json"

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> LabState:
        data = json.loads(path.read_text())
        procs = [TrackedProcess(p["pid"], p["starttime"], tuple(p["argv"]), p["role"])
                 for p in data.pop("processes", [])]
        return cls(**data, processes=procs)

    def owner_alive(self) -> bool:
        stat = _read_stat(self.owner_pid)
        return stat is not None and stat[1] == self.owner_starttime and stat[0] != "Z"


def own_starttime() -> int:
    stat = _read_stat(os.getpid())
    assert stat is not None
    return stat[1]
