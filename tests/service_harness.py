"""Runs `tunnelctl run` as a real process against a bare repo on disk and a namespace lab."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from git_remote import ConfigRemote

TUNNELCTL = str(Path(sys.executable).with_name("tunnelctl"))


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, OSError):
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def fields(self, key: str) -> list[tuple[float, str]]:
        out = []
        for t, msg in list(self.messages):
            for line in msg.split("\n"):
                if line.startswith(key + "="):
                    out.append((t, line.split("=", 1)[1]))
        return out

    def close(self) -> None:
        self._stop = True
        self._thread.join(1)
        self.sock.close()


class ServiceHarness:
    def __init__(self, root: Path, remote: ConfigRemote, target: Any, gateway: str,
                 **settings: Any) -> None:
        self.root = root
        self.remote = remote
        self.target = target
        self.gateway = gateway
        self.state_dir = root / "state"
        self.config = root / "tunnelctl.toml"
        self.log = root / "service.log"
        root.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: NotifySocket | None = None
        self.settings: dict[str, Any] = {
            "repo_url": str(remote.bare), "branch": remote.branch, "gateway": gateway,
            "interval": 1.0, "state_dir": str(self.state_dir),
            "secret_dir": str(target.secret_dir),
            "config_dir": str(target.config_dir), "netns": target.netns,
            "interface": target.interface, "metrics_address": "127.0.0.1:0", "host": "test-host",
            "fetch_timeout": 10.0, "retry_max": 5.0,
        }
        self.configure(**settings)

    def configure(self, **settings: Any) -> None:
        self.settings.update(settings)
        lines = []
        for key, value in self.settings.items():
            if value is None:
                continue
            lines.append(f"{key} = {json.dumps(value)}")
        self.config.write_text("\n".join(lines) + "\n")

    # -- process ---------------------------------------------------------------------------

    def start(self, *, notify: bool = False, watchdog_usec: int | None = None,
              env_extra: dict[str, str] | None = None) -> None:
        assert self.proc is None or self.proc.poll() is not None
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TUNNELCTL_", "NOTIFY_SOCKET", "WATCHDOG_"))}
        env.update(env_extra or {})  # e.g. the controller's TUNNELCTL_TEST_KILL_AT hook
        if notify:
            if self.notify is None:
                self.notify = NotifySocket(self.root / "notify.sock")
            env["NOTIFY_SOCKET"] = str(self.notify.path)
            if watchdog_usec:
                env["WATCHDOG_USEC"] = str(watchdog_usec)
        self._log_fh = open(self.log, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([TUNNELCTL, "run", "--config", str(self.config)],
                                     stdout=self._log_fh, stderr=self._log_fh, env=env,
                                     start_new_session=True)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None:
            self._log_fh.close()

    def close(self) -> None:
        self.stop()
        if self.notify is not None:
            self.notify.close()

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # -- observation -----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads((self.state_dir / "state.json").read_text())
            return state
        except (FileNotFoundError, ValueError):
            return {}

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float = 15.0) -> float:
        """Poll until predicate() holds; returns the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"service exited ({self.proc.returncode}) while waiting for "
                                     f"{what}\n{self.logs()[-3000:]}")
            try:
                if predicate():
                    return time.monotonic() - start
            except (FileNotFoundError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; state: "
                             f"{json.dumps(self.state(), indent=1)[:3000]}\n{self.logs()[-3000:]}")

    def applied(self) -> str | None:
        return (self.state().get("applied") or {}).get("commit")

    def wait_applied(self, commit: str, timeout: float = 15.0) -> float:
        return self.wait(f"commit {commit[:12]} applied", lambda: self.applied() == commit
                         and self.state().get("phase") not in ("Reconciling", "Starting"), timeout)

    def wait_cycle_after(self, t: float, timeout: float = 15.0) -> dict[str, Any]:
        self.wait("a finished cycle", lambda: any(h["started"] >= t for h in self.state()["history"])
                  and self.state()["phase"] != "Reconciling", timeout)
        return self.state()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([TUNNELCTL, *args, "--config", str(self.config)],
                              capture_output=True, text=True, timeout=120, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"tunnelctl {' '.join(args)} exited {proc.returncode}: "
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def status(self) -> dict[str, Any]:
        # status exits 1 whenever the service is not Ready and current: read it all the same.
        status: dict[str, Any] = json.loads(self.cli("status", "-o", "json", check=False).stdout)
        return status

    # -- the host --------------------------------------------------------------------------

    def ns(self, *argv: str, check: bool = True) -> str:
        proc = subprocess.run(["ip", "netns", "exec", self.target.netns, *argv],
                              capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv}: {proc.stderr}")
        return proc.stdout

    def peers(self) -> dict[str, str]:
        """Live peers: public key -> allowed ips."""
        out = self.ns("wg", "show", self.target.interface, "allowed-ips")
        return {line.split("\t")[0]: line.split("\t")[1] for line in out.splitlines() if line}

    def remove_peer(self, key: str) -> None:
        self.ns("wg", "set", self.target.interface, "peer", key, "remove")

    def routes(self) -> list[str]:
        out = self.ns("ip", "-4", "route", "show", "table", "all", "dev", self.target.interface,
                      "proto", "252")
        return [line.strip() for line in out.splitlines() if line.strip()]

    def nft_rules(self) -> int:
        out = self.ns("nft", "-a", "list", "table", "inet", "tunnelctl", check=False)
        return sum(1 for line in out.splitlines() if "# handle" in line and
                   not line.strip().startswith(("chain", "table", "set", "map")))

    def nft_tables(self) -> list[str]:
        return [line for line in self.ns("nft", "list", "tables").splitlines() if line]
