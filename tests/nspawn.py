"""A real PID 1 systemd for tests: a Debian bookworm root booted with systemd-nspawn.

The root filesystem is built once with mmdebstrap and cached as a tarball in
/var/cache/tunnelctl-test (the folder these tests own), together with a second tarball that
adds /opt/tunnelctl: a venv holding exactly requirements/runtime.lock + build.lock, installed
offline (`pip install --no-index --require-hashes`) from a wheelhouse downloaded on the host.
Each test run extracts a fresh copy under a unique /var/tmp folder, installs this checkout's
wheel into it (offline, --no-deps), boots it with its own network namespace
(`--private-network`) and the TUN device, and removes it afterwards, whatever happened.
See ../shared/reference/systemd-container.md for the recipe.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("TUNNELCTL_TEST_CACHE", "/var/cache/tunnelctl-test"))
PACKAGES = ("systemd,systemd-sysv,dbus,iproute2,nftables,wireguard-tools,wireguard-go,git,"
            "python3,python3-venv,ca-certificates,conntrack,procps,util-linux")
LOCKS = ("requirements/runtime.lock", "requirements/build.lock")
PY = str(ROOT / ".venv" / "bin" / "python")


def tools_missing() -> str | None:
    for tool in ("mmdebstrap", "systemd-nspawn", "script", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install mmdebstrap systemd-container)"
    if os.geteuid() != 0:
        return "needs root"
    if not Path("/dev/net/tun").exists():
        return "no /dev/net/tun"
    return None


def _run(argv: Sequence[str], *, timeout: float = 600, **kw: object) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout)[-2000:]}")
    out: str = proc.stdout
    return out


@contextmanager
def _cache_lock() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(CACHE / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def base_tarball() -> Path:
    """bookworm minbase + the packages, built once (about 45 s)."""
    tar = CACHE / f"bookworm-{_digest(PACKAGES.encode())}.tar"
    with _cache_lock():
        if not tar.exists():
            tmp = tar.with_name(tar.stem + ".part.tar")  # mmdebstrap picks the format by suffix
            tmp.unlink(missing_ok=True)
            _run(["mmdebstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm",
                  str(tmp)], timeout=900)
            tmp.rename(tar)
    return tar


def deps_tarball() -> Path:
    """The base plus /opt/tunnelctl with the locked runtime and build packages, installed
    offline from a wheelhouse downloaded on the host by hash."""
    base = base_tarball()
    locks = b"".join((ROOT / p).read_bytes() for p in LOCKS)
    tar = CACHE / f"deps-{_digest(base.name.encode(), locks)}.tar"
    with _cache_lock():
        if tar.exists():
            return tar
        wheels = CACHE / f"wheels-{_digest(locks)}"
        if not wheels.is_dir():
            part = wheels.with_suffix(".part")
            shutil.rmtree(part, ignore_errors=True)
            _run([PY, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                  "--no-deps", "--require-hashes", "--only-binary=:all:",
                  "-r", str(ROOT / LOCKS[0]), "-r", str(ROOT / LOCKS[1]), "-d", str(part)])
            part.rename(wheels)
        work = Path(tempfile.mkdtemp(prefix="tctest-deps-", dir="/var/tmp"))
        try:
            root = work / "root"
            root.mkdir()
            _run(["tar", "-xpf", str(base), "-C", str(root)])
            # Not /tmp: nspawn mounts a tmpfs there.
            shutil.copytree(wheels, root / "var" / "tmp" / "wheels")
            for p in LOCKS:
                shutil.copy(ROOT / p, root / "var" / "tmp" / "wheels" / Path(p).name)
            chroot_run(root, ["/bin/sh", "-ec",
                              ("python3 -m venv /opt/tunnelctl && /opt/tunnelctl/bin/pip install "
                              "-q --disable-pip-version-check --no-index --find-links "
                              "/var/tmp/wheels --require-hashes --no-deps "
                              "-r /var/tmp/wheels/runtime.lock -r /var/tmp/wheels/build.lock")])
            shutil.rmtree(root / "var" / "tmp" / "wheels")
            part = tar.with_name(tar.stem + ".part.tar")
            _run(["tar", "-cpf", str(part), "-C", str(root), "."])
            part.rename(tar)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return tar


def product_wheel(out: Path) -> Path:
    """This checkout built as a wheel (in a copy, so the work tree gets no build/ folder)."""
    src = out / "src"
    files = _run(["git", "ls-files", "-co", "--exclude-standard", "pyproject.toml",
                  "reconciler", "templates", "README.md"], cwd=ROOT).split()
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    _run([PY, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
          "--no-build-isolation", "--no-index", "-w", str(out / "dist"), str(src)])
    return next((out / "dist").glob("*.whl"))


def chroot_run(root: Path, argv: Sequence[str], timeout: float = 600) -> str:
    """A command in `root` without booting it (nspawn's plain mode: /dev, /proc set up)."""
    return _run(["systemd-nspawn", "-q", "-D", str(root), "--register=no", "--keep-unit",
                 "--private-network", "--pipe", "--", *argv], timeout=timeout,
                stdin=subprocess.DEVNULL)


class Container:
    """One booted container. `sh` runs a command inside (nsenter into PID 1's namespaces)."""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.root = root
        self.workdir = workdir
        self.name = "tct-" + uuid.uuid4().hex[:8]
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid1: int | None = None
        self.boots = 0

    # -- life ----------------------------------------------------------------------------

    def boot(self, timeout: float = 60.0) -> float:
        """Boot; returns the seconds until PID 1 exists (the caller waits for what it needs)."""
        assert self.proc is None
        self.boots += 1
        console = self.workdir / f"console-{self.boots}.log"
        cmd = (f"systemd-nspawn -D {self.root} -b --register=no --keep-unit --private-network "
               f"--bind=/dev/net/tun -M {self.name}")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(["script", "-qfec", cmd, str(console)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            pid = self._find_pid1()
            if pid is not None:
                self.pid1 = pid
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"container did not boot; console: {console.read_text()[-3000:]}"
                           if console.exists() else "container did not boot")

    def _find_pid1(self) -> int | None:
        assert self.proc is not None
        todo, seen = [self.proc.pid], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm == "systemd" and pid != self.proc.pid:
                parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
                pcomm = Path(f"/proc/{parent}/comm").read_text().strip()
                if pcomm.startswith("systemd-nspawn"):
                    return pid
            todo.extend(int(c) for c in children)
        return None

    def poweroff(self, timeout: float = 60.0) -> None:
        """A clean poweroff (systemctl poweroff inside), then wait for nspawn to exit."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.sh(["systemctl", "--no-block", "poweroff"], check=False, timeout=10)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        self.proc = None
        self.pid1 = None

    def _kill(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def destroy(self) -> None:
        """Stop it (hard if need be) and remove its root and leftovers."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.poweroff(timeout=20)
            except Exception:  # noqa: BLE001 - fall back to SIGKILL
                self._kill()
        self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- inside --------------------------------------------------------------------------

    def sh(self, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0,
           stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        assert self.pid1 is not None
        proc = subprocess.run(["nsenter", "-t", str(self.pid1), "-a", "--", *argv],
                              input=stdin, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"in container: {' '.join(argv)} exited {proc.returncode}: "
                               f"{proc.stderr[-2000:]}{proc.stdout[-1000:]}")
        return proc

    def wait_for(self, what: str, argv: Sequence[str], *, timeout: float,
                 ok: str | None = None, interval: float = 0.2) -> float:
        """Poll a command until it exits 0 (and prints `ok`, if given); seconds taken."""
        t0 = time.monotonic()
        last = None
        while time.monotonic() - t0 < timeout:
            last = self.sh(argv, check=False, timeout=30)
            if last.returncode == 0 and (ok is None or ok in last.stdout):
                return time.monotonic() - t0
            time.sleep(interval)
        detail = (last.stdout + last.stderr)[-1500:] if last is not None else ""
        raise AssertionError(f"timed out after {timeout}s waiting for {what}: {detail}")


def fresh_root(prefix: str = "tctest-") -> tuple[Path, Path]:
    """A new work folder with an extracted root holding the locked deps and this checkout."""
    deps = deps_tarball()
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    root = work / "root"
    root.mkdir()
    try:
        _run(["tar", "-xpf", str(deps), "-C", str(root)])
        wheel = product_wheel(work / "build")
        dest = root / "var" / "tmp" / wheel.name
        shutil.copy(wheel, dest)
        chroot_run(root, ["/opt/tunnelctl/bin/pip", "install", "-q", "--disable-pip-version-check",
                          "--no-index", "--no-deps", f"/var/tmp/{wheel.name}"])
        dest.unlink()
        link = root / "usr" / "local" / "bin" / "tunnelctl"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to("/opt/tunnelctl/bin/tunnelctl")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return work, root


if __name__ == "__main__":  # warm the cache by hand: python tests/nspawn.py
    print(deps_tarball(), file=sys.stderr)
