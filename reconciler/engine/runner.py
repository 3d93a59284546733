"""The one place that touches the host: processes, the wireguard-go control socket, files.

Everything else builds argument lists and hands them here, so dry runs, tests and network
namespaces are all a matter of which runner is passed. Tenant input never reaches a shell:
commands are argument lists, and secrets travel on stdin or in 0600 files, never in argv.

Crash safety: every child dies with the thread that started it (PR_SET_PDEATHSIG, SIGKILL, set
by `setpriv` before it execs the command; see _tethered), and inherits the locks this process
holds (files.held_lock_fds), so a `kill -9` of tunnelctl never leaves an `nft -f` committing
behind a lock that looks free. A transaction nft reports as busy
(another nft's commit still in the kernel: ENOBUFS / EBUSY) changed nothing and is retried.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import functools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.engine import nftbatch, nftgen
from reconciler.engine.files import atomic_write, held_lock_fds
from reconciler.engine.nftbatch import Message
from reconciler.engine.nftgen import Generation

UAPI_DIR = Path("/var/run/wireguard")

PR_SET_PDEATHSIG = 1
# nft's messages for a transaction the kernel could not take now; it was not applied at all.
NFT_BUSY = ("No buffer space available", "Device or resource busy")
NFT_BUSY_RETRIES = 6  # 0.1, 0.2, 0.4, 0.8, 1.6, 3.2 s: longer than a 16k-tenant commit


def _load_prctl() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    fn: Callable[..., int] = libc.prctl
    return fn


_PRCTL = _load_prctl()


def _die_with_parent(parent: int) -> Callable[[], None]:
    """preexec_fn of every child: SIGKILL when the thread that forked it dies; exits at once
    if the parent is already gone (it died between fork and prctl)."""
    def setup() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(137)
    return setup


@functools.cache
def setpriv() -> str | None:
    """util-linux setpriv (Essential on Debian) when it can set PR_SET_PDEATHSIG here: it also
    calls capset, which a seccomp filter without @privileged refuses (the boot units'); then
    None, and children are tethered by a preexec_fn (slower, same guarantee)."""
    path = shutil.which("setpriv")
    if path is None:
        return None
    try:
        probe = subprocess.run([path, "--pdeathsig", "KILL", "--", "true"],
                               capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return path if probe.returncode == 0 else None


def _tethered(argv: list[str]) -> tuple[list[str], dict[str, object]]:
    """argv and subprocess options for a child that dies with the thread that starts it and
    holds our locks while it runs. `setpriv --pdeathsig KILL` sets PR_SET_PDEATHSIG and execs
    argv (same pid), so Python can vfork: ~2 ms per command. A preexec_fn doing the same
    makes Python fork the whole process instead, page tables and all, holding the GIL: ~20 ms
    per command at the service's 230 MiB, every other thread stalled meanwhile. The lock fds
    are passed either way: a child that outlives us (killed between vfork and setpriv's
    prctl) still holds the lock, so nobody mistakes its writes for nobody's."""
    tether = setpriv()
    if tether is not None:
        return [tether, "--pdeathsig", "KILL", "--", *argv], {"pass_fds": held_lock_fds()}
    return argv, {"preexec_fn": _die_with_parent(os.getpid()), "pass_fds": held_lock_fds()}


def _uapi_exchange(interface: str, request: bytes) -> tuple[str, str | None]:
    """Send one request on `interface`'s control socket and read the reply to its end (a
    blank line): (the reply before its `errno=` line, that errno, or None without one)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(UAPI_DIR / f"{interface}.sock"))
        sock.sendall(request)
        chunks: list[bytes] = []
        tail = b""
        while not tail.endswith(b"\n\n"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            tail = (tail + chunk)[-64:]
    body = b"".join(chunks).decode()
    at = body.rfind("errno=")
    if at < 0 or (at > 0 and body[at - 1] != "\n"):
        return body, None
    return body[:at], body[at + 6:].strip()


def _uapi_check(interface: str, request: str, code: str) -> None:
    """CommandError unless the reply's errno is 0 (wireguard-go sends e.g. -22, EINVAL)."""
    if code != "0":
        number = int(code) if code.lstrip("-").isdigit() else 1
        raise CommandError(["uapi", interface, request], number,
                           f"wireguard-go returned errno={code}")


def _busy_attempts() -> Iterator[bool]:
    """One transaction's attempts, True while one more is allowed: a refusal as busy changed
    nothing, so the caller retries, after 0.1 s and then twice as long each time."""
    delay = 0.1
    for attempt in range(NFT_BUSY_RETRIES + 1):
        if attempt:
            time.sleep(delay)
            delay *= 2
        yield attempt < NFT_BUSY_RETRIES


def nft_busy(argv: Sequence[str], returncode: int, stderr: str) -> bool:
    """A failed nft write the kernel refused as busy: nothing applied, safe to run again."""
    return returncode != 0 and "nft" in argv[:6] and any(m in stderr for m in NFT_BUSY)


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
        detach: bool = False,
    ) -> Result:
        """Run argv (in the namespace, if any). `write=True` marks a host-changing call.

        The child dies with us and holds our locks while it runs; `detach=True` is for a
        command that leaves a daemon behind (wireguard-go forking itself into the background):
        neither, or the daemon would hold the lock for good."""
        full = self._wrap(argv)
        if write:
            self.writes += 1
        self.log.append(tuple(full))
        data = stdin.encode() if isinstance(stdin, str) else stdin
        exec_argv, extra = (full, {}) if detach else _tethered(full)
        for may_retry in _busy_attempts():
            proc = subprocess.run(exec_argv, input=data, capture_output=True, timeout=timeout,
                                  check=False, **extra)  # type: ignore[call-overload]
            res = Result(tuple(full), proc.returncode, proc.stdout.decode(errors="replace"),
                         proc.stderr.decode(errors="replace"))
            if not (write and may_retry and nft_busy(full, proc.returncode, res.stderr)):
                break
            self.log.append(("retry", *full[:4]))
        if check and proc.returncode != 0:
            raise CommandError(full, proc.returncode, res.stderr)
        return res

    def spawn(self, argv: Sequence[str], *, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        """Start a long-lived child (wireguard-go in the foreground) that dies with this
        thread; it inherits no lock. stdin from /dev/null, output to ours (the journal)."""
        full = self._wrap(argv)
        self.log.append(("spawn", *full))
        # preexec_fn with threads: the hook is one prctl through a function resolved at
        # import and a getppid; it takes no Python lock and imports nothing.
        return subprocess.Popen(full, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=_die_with_parent(os.getpid()))  # noqa: PLW1509

    @staticmethod
    def stop(child: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """SIGTERM a spawned child, SIGKILL it after `grace` seconds; reaps it."""
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(grace)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def uapi(self, interface: str, request: str, *, write: bool = False) -> str:
        """One request on wireguard-go's control socket (the cross-platform UAPI protocol).

        The socket lives in the filesystem, not the network namespace, so no netns wrapping.
        Returns the response body; raises CommandError when errno != 0.
        """
        if write:
            self.writes += 1
        first = request.split("\n", 1)[0]
        self.log.append(("uapi", interface, first))
        body, code = _uapi_exchange(interface, request.encode()
                                    + (b"" if request.endswith("\n\n") else b"\n"))
        _uapi_check(interface, first, code or "0")
        return body.rstrip("\n")

    def uapi_get(self, interface: str) -> str:
        """wireguard-go's whole `get=1` reply (interface and every peer; it holds the keys, so
        it stays in memory), as it came (5 MB at 16k peers: no per-line handling). A reply
        without its errno line is an error here."""
        self.log.append(("uapi", interface, "get=1"))
        body, code = _uapi_exchange(interface, b"get=1\n\n")
        _uapi_check(interface, "get=1", code or "?")
        return body

    def has_uapi(self, interface: str) -> bool:
        return (UAPI_DIR / f"{interface}.sock").is_socket()

    def nft_generation(self) -> Generation | None:
        """The nf_tables ruleset generation of this runner's namespace (one netlink request);
        None when unreadable, or for a test double that fakes commands (and so host state)."""
        if type(self).run is not Runner.run:
            return None
        return nftgen.probe(self.netns)

    def nft_elements(self, messages: Sequence[Message], stdin: str) -> None:
        """An element transaction as one nf_tables netlink batch in this runner's namespace
        (all or nothing, like `nft -f -` of `stdin`, which a test double runs instead).
        A batch refused as busy (another commit in progress) changed nothing and is retried;
        any other refusal raises CommandError naming the message and the kernel's reason."""
        if type(self).run is not Runner.run:
            self.run(["nft", "-f", "-"], stdin=stdin, write=True)
            return
        self.writes += 1
        self.log.append(("nft-netlink", nftbatch.text(messages)))
        argv = ["nft-netlink", nftbatch.text(messages)]
        for may_retry in _busy_attempts():
            data = nftbatch.batch(messages, 1)  # a socket of its own: its numbers are its own
            seqs = range(2, 2 + len(messages))
            try:
                acks = nftgen.transact(self.netns, data, seqs)
            except OSError as exc:
                raise CommandError(argv, exc.errno or 1, f"netlink: {exc}") from exc
            refused = [(seq, err) for seq, err in sorted(acks.items()) if err]
            if refused:
                seq, err = refused[0]
                if may_retry and err in (errno_mod.EBUSY, errno_mod.ENOBUFS):
                    self.log.append(("retry", "nft-netlink"))
                    continue
                what = messages[seq - seqs.start].what
                raise CommandError(argv, err, f"{what}: {os.strerror(err)}")
            if len(acks) != len(messages):
                raise CommandError(argv, 1, f"netlink: {len(acks)} of {len(messages)} "
                                   "messages answered; the transaction's outcome is unknown")
            return

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
