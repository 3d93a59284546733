"""Two file primitives the reconciler relies on for crash safety.

`atomic_write`: a file is either the old or the new content, never half of one (temp file in
the same directory, fsync, rename, fsync of the directory). `pid_lock`: an exclusive flock that
records the holder's pid; the kernel drops it when the last holder of the open file is gone,
so a killed run never leaves a stale lock behind. The runner hands every held lock to the
processes it starts (`held_lock_fds`), so a lock outlives a killed Python for as long as one
of its children (an `nft -f` mid-commit) still runs: the next apply waits for it.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: Path, content: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LockHeld(RuntimeError):
    """Another live process holds the lock; `holder` is the pid it recorded ("?" if none)."""

    def __init__(self, path: Path, holder: str) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"pid {holder} holds {path}")


_HELD: set[int] = set()  # fds of the locks this process holds (see held_lock_fds)


def held_lock_fds() -> tuple[int, ...]:
    """The fds of every pid_lock this process holds: children inherit them (pass_fds), so a
    lock stays held until the last process that may still write for its holder is gone."""
    return tuple(sorted(_HELD))


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


@contextmanager
def pid_lock(path: Path, *, wait: float, poll: float = 0.05, mode: int = 0o600) -> Iterator[None]:
    """Hold an exclusive flock on `path`, waiting up to `wait` seconds; raises LockHeld.

    After flock succeeds the path is checked to still name the locked file (same device and
    inode): a lock file deleted or replaced meanwhile (a directory cleaned up, a service's
    runtime directory removed) would otherwise let two holders run at once; then it opens the
    path again and retries."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    deadline = time.monotonic() + wait
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                        raise LockHeld(path, holder) from None
                    time.sleep(poll)
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            break
        os.close(fd)  # the file we locked is no longer the one at `path`: lock that one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD.add(fd)
        yield
    finally:
        _HELD.discard(fd)
        os.close(fd)  # closing releases the flock (once no child holds it any more)
