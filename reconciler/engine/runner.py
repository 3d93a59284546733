"""The one place that touches the host: processes, the wireguard-go control socket, files.

Everything else builds argument lists and hands them here, so dry runs, tests and network
namespaces are all a matter of which runner is passed. Tenant input never reaches a shell:
commands are argument lists, and secrets travel on stdin or in 0600 files, never in argv.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.engine.files import atomic_write

UAPI_DIR = Path("/var/run/wireguard")


class CommandError(RuntimeError):
    """A host command failed; carries the argv (never secrets) and its stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"{' '.join(self.argv)} exited {returncode}: {self.stderr}")


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Runner:
    """Runs commands on the host, or inside network namespace `netns` when set."""

    netns: str | None = None
    writes: int = 0  # host-changing calls made through this runner (tests assert no-op cycles make none)
    log: list[tuple[str, ...]] = field(default_factory=list)

    def _wrap(self, argv: Sequence[str]) -> list[str]:
        if self.netns:
            return ["ip", "netns", "exec", self.netns, *argv]
        return list(argv)

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | bytes | None = None,
        check: bool = True,
        write: bool = False,
        timeout: float = 60.0,
    ) -> Result:
        """Run argv (in the namespace, if any). `write=True` marks a host-changing call."""
        full = self._wrap(argv)
        if write:
            self.writes += 1
        self.log.append(tuple(full))
        data = stdin.encode() if isinstance(stdin, str) else stdin
        proc = subprocess.run(full, input=data, capture_output=True, timeout=timeout, check=False)
        res = Result(tuple(full), proc.returncode, proc.stdout.decode(errors="replace"),
                     proc.stderr.decode(errors="replace"))
        if check and proc.returncode != 0:
            raise CommandError(full, proc.returncode, res.stderr)
        return res

    def uapi(self, interface: str, request: str, *, write: bool = False) -> str:
        """One request on wireguard-go's control socket (the cross-platform UAPI protocol).

        The socket lives in the filesystem, not the network namespace, so no netns wrapping.
        Returns the response body; raises CommandError when errno != 0.
        """
        if write:
            self.writes += 1
        self.log.append(("uapi", interface, request.split("\n", 1)[0]))
        path = UAPI_DIR / f"{interface}.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(path))
            sock.sendall(request.encode() + (b"" if request.endswith("\n\n") else b"\n"))
            buf = bytearray()
            # A response ends with "errno=N\n\n"; get requests carry key=value lines before it.
            while not buf.endswith(b"\n\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                buf += chunk
        body = buf.decode()
        lines = body.rstrip("\n").split("\n")
        errno = next((ln.split("=", 1)[1] for ln in lines if ln.startswith("errno=")), "0")
        if errno != "0":
            raise CommandError(["uapi", interface, request.split("\n", 1)[0]], int(errno),
                               f"wireguard-go returned errno={errno}")
        return "\n".join(ln for ln in lines if not ln.startswith("errno="))

    def has_uapi(self, interface: str) -> bool:
        return (UAPI_DIR / f"{interface}.sock").is_socket()

    def write_file(self, path: Path, content: str, mode: int = 0o600) -> None:
        """Atomic write: temp file in the same directory, fsync, rename. Never half a file."""
        self.writes += 1
        self.log.append(("write", str(path)))
        atomic_write(path, content, mode)

    def create_file(self, path: Path, content: str, mode: int = 0o600) -> bool:
        """Create `path` only if it does not exist (O_EXCL): keys and secrets are never
        overwritten. Returns False, changing nothing, when the file already exists."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            return False
        self.writes += 1
        self.log.append(("create", str(path)))
        try:
            os.fchmod(fd, mode)  # os.open applied the umask; make the mode exact
            with os.fdopen(fd, "w") as fh:
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return True
