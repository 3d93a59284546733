"""Real packets through the lab: probes run inside a namespace with `netprobe.py`.

Each probe is one short process started through `Runner(netns)` with an argument list; a flow
is a tracked daemon stopped with SIGINT, which then prints its loss summary. Servers log every
packet they receive (`ServeLog`), so "this packet never arrived" is observed at the receiver,
not inferred from a missing reply.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from reconciler.engine.runner import Runner

from .processes import TrackedProcess, spawn, stop, wait_for

Address = IPv4Address | IPv6Address | str  # either family (netprobe picks by the address)

NETPROBE = Path(__file__).resolve().with_name("netprobe.py")


def netprobe_argv(*args: str) -> list[str]:
    # -I: isolated mode; the tool is pure standard library and must not pick up the caller's env.
    return [sys.executable, "-I", str(NETPROBE), *args]


def nonce(label: str = "probe") -> str:
    """A payload no other packet carries, to look for in a ServeLog."""
    return f"{label}-{secrets.token_hex(6)}"


def _probe(netns: str, args: list[str], timeout: float) -> tuple[bool, dict[str, Any]]:
    res = Runner(netns).run(netprobe_argv(*args), check=False, timeout=timeout + 10)
    if res.returncode not in (0, 1):
        raise RuntimeError(f"netprobe {args[0]} in {netns} failed: {res.stderr.strip() or res.stdout}")
    return res.returncode == 0, json.loads(res.stdout or "{}")


def udp_probe(netns: str, dst: Address, port: int, *, payload: str | None = None,
              src: Address | None = None, spoof: bool = False,
              timeout: float = 1.0) -> bool:
    """Send one datagram from `netns`; True when the same payload is echoed back in time.

    `spoof=True` sends from `src` even though the namespace does not own it (IP_TRANSPARENT).
    """
    args = ["udp", "--dst", str(dst), "--port", str(port), "--timeout", str(timeout),
            "--payload", payload or nonce("udp")]
    if src is not None:
        args += ["--src", str(src)]
    if spoof:
        args.append("--spoof")
    return _probe(netns, args, timeout)[0]


def tcp_probe(netns: str, dst: Address, port: int, *, timeout: float = 1.0) -> bool:
    """True when a TCP connection to dst:port is accepted within `timeout`."""
    return _probe(netns, ["tcp", "--dst", str(dst), "--port", str(port),
                          "--timeout", str(timeout)], timeout)[0]


def ping(netns: str, dst: Address, *, count: int = 1, timeout: float = 1.0) -> bool:
    """ICMP echo from `netns` (like `ping -c COUNT -W TIMEOUT`): True when every reply came."""
    return _probe(netns, ["ping", "--dst", str(dst), "--count", str(count),
                          "--timeout", str(timeout)], timeout * count)[0]


@dataclass(frozen=True)
class FlowResult:
    sent: int
    received: int
    lost: tuple[int, ...]  # sequence numbers that never got a reply
    seconds: float


class Flow:
    """A steady ICMP (or UDP echo) flow from one namespace, until `stop()`.

    Use through `Lab.flow(...)`, which tracks the process so teardown stops it on any error.
    """

    def __init__(self, netns: str, dst: Address, *, workdir: Path,
                 interval: float = 0.05, proto: str = "icmp", port: int = 5060,
                 on_start: Callable[[TrackedProcess, subprocess.Popen[bytes]], None] | None = None,
                 ) -> None:
        tag = secrets.token_hex(4)
        self.output = workdir / f"flow-{tag}.json"
        self.ready = workdir / f"flow-{tag}.ready"
        self.process, self._popen = spawn(
            netprobe_argv("flow", "--dst", str(dst), "--proto", proto, "--port", str(port),
                          "--interval", str(interval), "--ready", str(self.ready)),
            role="flow", netns=netns, output=self.output)
        if on_start:
            on_start(self.process, self._popen)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the first reply came back (the path works before we measure loss)."""
        wait_for(self.ready, timeout=timeout, what="flow (first reply)", alive=self.process,
                 log=self.output)

    def stop(self) -> FlowResult:
        if not stop(self.process, self._popen, sig=signal.SIGINT, timeout=10.0):
            raise RuntimeError(f"flow process {self.process.pid} had already exited")
        for _ in range(50):  # the summary is written just before exit
            text = self.output.read_text()
            if text.strip():
                break
            time.sleep(0.01)
        data = json.loads(text.strip().splitlines()[-1])
        return FlowResult(data["sent"], data["received"], tuple(data["lost"]), data["seconds"])


@dataclass(frozen=True)
class ServeLog:
    """The JSON-lines log of one `netprobe serve` (a namespace's echo/listen server)."""

    path: Path

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def received(self, payload: str, *, proto: str = "udp", dport: int | None = None,
                 src: Address | None = None) -> bool:
        """Did a packet carrying `payload` arrive (on `dport`, from `src`, when given)?"""
        for e in self.entries():
            if e["proto"] == proto and e["payload"] == payload \
                    and (dport is None or e["dport"] == dport) \
                    and (src is None or e["src"] == str(src)):
                return True
        return False

    def connections(self, *, dport: int, src: Address | None = None) -> int:
        return sum(1 for e in self.entries() if e["proto"] == "tcp" and e["dport"] == dport
                   and (src is None or e["src"] == str(src)))
