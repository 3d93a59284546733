"""sd_notify(3) without a dependency: datagrams on $NOTIFY_SOCKET, and the watchdog cadence.

Outside systemd (no NOTIFY_SOCKET) every call is a cheap no-op, so the loop calls it always.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET", "")
        self.watchdog_interval = _watchdog_interval(env)
        self._last_ping = 0.0
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> bool:
        """Send `KEY=value` lines in one datagram; False (never an exception) if it failed."""
        if not self.address:
            return False
        addr = self.address
        if addr.startswith("@"):  # abstract socket namespace
            addr = "\0" + addr[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), addr)
            return True
        except OSError:
            return False

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={_one_line(status)}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={_one_line(status)}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self, *, force: bool = False) -> bool:
        """WATCHDOG=1 at most every half watchdog interval. Called from the loop only: a hung
        cycle stops the pings and systemd restarts the service."""
        if self.watchdog_interval is None:
            return False
        now = time.monotonic()
        if not force and now - self._last_ping < self.watchdog_interval / 2:
            return False
        self._last_ping = now
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: os._Environ[str] | dict[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # the watchdog is meant for another process
    return int(usec) / 1_000_000


def _one_line(text: str) -> str:
    return " ".join(text.split())[:400]
