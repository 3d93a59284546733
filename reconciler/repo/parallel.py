"""Single-file checks of many files on two CPUs, for cold loads of big repos.

Parsing is the expensive part of a cold load (about 45 µs a file with libyaml, against 18 µs
for the schema). A forked child parses files from the end of the list down and streams back the
plain values (cheap to pickle, unlike models) in chunks; this process checks files from the
start up and, between its own files, validates the child's chunks as they arrive, until the two
meet. There is no fixed share: the two vCPUs of a shared VM are often unequally fast, and
whoever is faster simply does more. When the files are still on disk (`read_and_check`) the
child also reads its files and sends the bytes back with the values, so reading is split too.

Anything odd on the child's side (it dies, a chunk is short or garbled, one file fails there)
only means this process does those files itself: the result is always the serial one, in the
order of the input. Only used when the caller asks for it (`jobs > 1`): forking is safe in the
single-threaded CLI, not necessarily inside a service with threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO, NoReturn, TypeVar

from reconciler.repo.fileload import FileCheck, check_document
from reconciler.repo.layout import read_capped
from reconciler.repo.model import Gateway, Tunnel
from reconciler.repo.yamlio import ParsedYaml, YamlProblem, parse

MIN_FILES = 2000  # below this a fork costs more than it saves
CHUNK = 64  # files per message from the child (~40 kB); chunks shrink near the meeting point
_LOOK_EVERY = 16  # files between two looks at the other process's progress
_HEADER = 8  # bytes of a message's length prefix (and of a position)
# Room for many chunks: in the default 64 kB pipe the child would wait for this process's next
# look at the pipe.
_PIPE_BYTES = 1 << 20

Kind = type[Tunnel | Gateway]
Item = tuple[bytes, Kind]
Parsed = ParsedYaml | YamlProblem
Read = tuple[bytes, FileCheck | None]  # a file's bytes and its check (None: check it later)
R = TypeVar("R")


def _values_only(data: bytes) -> Parsed:
    parsed = parse(data)
    return ParsedYaml(parsed.value, None) if isinstance(parsed, ParsedYaml) else parsed


def _forks(n: int, jobs: int) -> bool:
    return jobs >= 2 and n >= MIN_FILES and hasattr(os, "fork")


def check_all(items: Sequence[Item], jobs: int = 1) -> list[FileCheck]:
    """check_document for every (data, kind), in order; forks one helper when jobs > 1."""
    if not _forks(len(items), jobs):
        return [check_document(data, kind) for data, kind in items]

    def mine(i: int) -> FileCheck:
        return check_document(*items[i])

    def theirs(i: int) -> object:
        return _values_only(items[i][0])

    def finish(i: int, sent: object) -> FileCheck:
        if not isinstance(sent, (ParsedYaml, YamlProblem)):
            return mine(i)  # the child could not parse it
        return check_document(items[i][0], items[i][1], sent)

    return _split(len(items), mine, theirs, finish)


def read_and_check(paths: Sequence[tuple[str, Kind]], jobs: int = 1) -> list[Read]:
    """The bytes (`read_capped`) of every (path, kind), in order, each with its check_document
    result when it was checked here (None: the caller checks it, also when checking raised).
    With jobs > 1 a forked helper reads and parses part of the files. A file that cannot be
    read raises OSError, as in a serial read."""
    if not _forks(len(paths), jobs):
        return [(read_capped(path), None) for path, _ in paths]

    def mine(i: int) -> Read:
        path, kind = paths[i]
        data = read_capped(path)
        return data, _checked(data, kind, None)

    def theirs(i: int) -> object:
        try:
            data = read_capped(paths[i][0])
        except OSError:
            return None  # this process tries again, and reports it
        return data, _values_only(data)

    def finish(i: int, sent: object) -> Read:
        if not (isinstance(sent, tuple) and len(sent) == 2 and isinstance(sent[0], bytes)
                and isinstance(sent[1], (ParsedYaml, YamlProblem))):
            return mine(i)
        return sent[0], _checked(sent[0], paths[i][1], sent[1])

    return _split(len(paths), mine, theirs, finish)


def _checked(data: bytes, kind: Kind, parsed: Parsed | None) -> FileCheck | None:
    try:
        return check_document(data, kind, parsed)
    except Exception:  # noqa: BLE001  (the caller's own check reports it)
        return None


def _split(n: int, mine: Callable[[int], R], theirs: Callable[[int], object],
           finish: Callable[[int, object], R]) -> list[R]:
    """[mine(i) for i in range(n)], shared with a forked child that works from the end: it
    runs theirs(i) on chunks going down, this process turns each into finish(i, result) and
    does mine(i) going up until the two meet. No fixed split: the two CPUs of a shared VM are
    not always equally fast, so whoever is faster simply does more."""
    read_fd, write_fd = os.pipe()
    pos_read, pos_write = os.pipe()  # this process's position, for the child to stop at
    with contextlib.suppress(OSError, AttributeError):  # Linux: room for a few chunks
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    try:
        pid = os.fork()
    except OSError:
        for fd in (read_fd, write_fd, pos_read, pos_write):
            os.close(fd)
        return [mine(i) for i in range(n)]
    if pid == 0:
        os.close(read_fd)
        os.close(pos_write)
        _child(n, theirs, write_fd, pos_read)
    os.close(write_fd)
    os.close(pos_read)
    os.set_blocking(pos_write, False)
    stream = _Stream(read_fd)
    try:
        return _meet(n, mine, finish, stream, pos_write)
    finally:
        os.close(pos_write)  # the child stops at its next look
        os.close(read_fd)  # a child still writing gets EPIPE and exits
        os.waitpid(pid, 0)


def _meet(n: int, mine: Callable[[int], R], finish: Callable[[int, object], R],
          stream: _Stream, pos_write: int) -> list[R]:
    out: list[Any] = [None] * n
    i, low = 0, n  # this process has done [0, i); the child's chunks cover [low, n)
    live = True
    while i < low:
        if live and i % _LOOK_EVERY == 0:
            with contextlib.suppress(BlockingIOError, BrokenPipeError):
                os.write(pos_write, i.to_bytes(_HEADER, "big"))
            try:
                for message in stream.ready():
                    low = _take(message, i, low, out, finish)
            except Exception:  # noqa: BLE001  (a dead child or garbage: the rest is done here)
                live = False
        if i < low:
            out[i] = mine(i)
            i += 1
    return out


def _take(message: object, i: int, low: int, out: list[Any],
          finish: Callable[[int, object], Any]) -> int:
    """The child's next chunk (the one just below `low`) into `out`, except files this process
    did meanwhile; the new low. ValueError unless it is the chunk expected next."""
    if not (isinstance(message, tuple) and len(message) == 2 and isinstance(message[0], int)
            and isinstance(message[1], list) and 0 < len(message[1]) <= CHUNK
            and message[0] + len(message[1]) == low and message[0] >= 0):
        raise ValueError("not the chunk expected next")
    start, sent = int(message[0]), message[1]
    for k in range(max(start, i), low):
        out[k] = finish(k, sent[k - start])
    return start


def _child(n: int, theirs: Callable[[int], object], write_fd: int, pos_read: int) -> NoReturn:
    try:
        gc.disable()
        with os.fdopen(write_fd, "wb") as out:
            _send_chunks(n, theirs, out, _Position(pos_read))
    finally:
        os._exit(0)  # no atexit handlers, no flushing the parent's buffers twice


def _send_chunks(n: int, theirs: Callable[[int], object], out: BinaryIO,
                 parent: _Position) -> None:
    """Chunks of files from the end down, until the parent's position or its end. Chunks
    shrink near the parent (a quarter of the gap), so that it rarely overtakes one in work."""
    hi = n
    while True:
        at = parent.at()
        lo = hi - max(1, min(CHUNK, (hi - at) // 4))
        if lo < at:
            return
        sent: list[object] = []
        for k in range(lo, hi):
            if k % _LOOK_EVERY == 0 and parent.done():
                return
            try:
                sent.append(theirs(k))
            except Exception:  # noqa: BLE001  (the parent does this file itself)
                sent.append(None)
        blob = pickle.dumps((lo, sent), protocol=pickle.HIGHEST_PROTOCOL)
        out.write(len(blob).to_bytes(_HEADER, "big"))
        out.write(blob)
        out.flush()
        hi = lo


class _Position:
    """The parent's latest position as the child sees it (it writes one 8-byte number now
    and then, and closes the pipe when it is done)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending = b""
        self._at = 0
        self._done = False
        os.set_blocking(fd, False)

    def _look(self) -> None:
        while not self._done:
            try:
                data = os.read(self._fd, 4096)
            except BlockingIOError:
                return
            self._done = not data
            self._pending += data
            whole = len(self._pending) // _HEADER * _HEADER
            if whole:
                self._at = int.from_bytes(self._pending[whole - _HEADER:whole], "big")
                self._pending = self._pending[whole:]

    def at(self) -> int:
        self._look()
        return self._at

    def done(self) -> bool:
        self._look()
        return self._done


class _Stream:
    """The child's length-prefixed messages, taken without waiting."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()
        self._pos = 0  # where the next message starts in _buf
        self._eof = False
        os.set_blocking(fd, False)

    def ready(self) -> Iterator[object]:
        """Each message complete by now, unpickled."""
        while not self._eof:
            try:
                data = os.read(self._fd, 1 << 20)
            except BlockingIOError:
                break
            self._eof = not data
            self._buf += data
        buf = self._buf
        while len(buf) - self._pos >= _HEADER:
            size = int.from_bytes(buf[self._pos:self._pos + _HEADER], "big")
            end = self._pos + _HEADER + size
            if len(buf) < end:
                break
            message = pickle.loads(buf[self._pos + _HEADER:end])
            self._pos = end
            yield message
        del buf[:self._pos]
        self._pos = 0
