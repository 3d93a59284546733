"""Single-file checks of many files on two CPUs, for cold loads of big repos.

Parsing is the expensive part of a cold load (about 45 µs a file with libyaml, against 18 µs
for the schema), so a forked child parses the larger part of the files and streams back the
plain values (cheap to pickle, unlike models) in chunks, while this process parses its own part
and then validates everything, the child's chunks as they arrive. When the files are still on
disk (`read_and_check`) the child also reads its own share and sends the bytes back with the
values, so reading is split too.

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
from typing import NoReturn, TypeVar

from reconciler.repo.fileload import FileCheck, check_document
from reconciler.repo.layout import read_capped
from reconciler.repo.model import Gateway, Tunnel
from reconciler.repo.yamlio import ParsedYaml, YamlProblem, parse

MIN_FILES = 2000  # below this a fork costs more than it saves
# This process's share of the files: it also validates and unpickles the child's share
# (about 18 + 4 µs a file against 45 µs of parsing), so the child takes the larger part.
PARENT_SHARE = 0.42
CHUNK = 256  # files per message from the child: small enough to keep both processes busy
_DRAIN_EVERY = 32  # own files between two looks at the pipe, so the child never waits on it
_HEADER = 8  # bytes of a message's length prefix
# A chunk is ~150 kB: in the default 64 kB pipe the child would wait for this process's next
# look at the pipe several times a chunk.
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
    """[mine(i) for i in range(n)], with the tail's work shared with a forked child: the child
    runs theirs(i) and this process turns each result into finish(i, result)."""
    cut = int(n * PARENT_SHARE)
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError, AttributeError):  # Linux: room for a few chunks
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        return [mine(i) for i in range(n)]
    if pid == 0:
        os.close(read_fd)
        _child(range(cut, n), theirs, write_fd)
    os.close(write_fd)
    stream = _Stream(read_fd)
    try:
        out: list[R] = []
        for i in range(cut):
            out.append(mine(i))
            if i % _DRAIN_EVERY == _DRAIN_EVERY - 1:
                stream.drain()
        # A child that died or sent garbage: the rest is done here.
        with contextlib.suppress(Exception):
            for message in stream.messages():
                out.extend(_finished(message, len(out), n, finish))
        out.extend(mine(i) for i in range(len(out), n))
        return out
    finally:
        os.close(read_fd)  # a child still writing gets EPIPE and exits
        os.waitpid(pid, 0)


def _finished(message: object, start: int, n: int,
              finish: Callable[[int, object], R]) -> list[R]:
    """One chunk from the child as results; ValueError unless it is the next one expected."""
    if not (isinstance(message, tuple) and len(message) == 2 and message[0] == start
            and isinstance(message[1], list) and len(message[1]) == min(CHUNK, n - start)):
        raise ValueError("not the chunk expected next")
    return [finish(start + k, sent) for k, sent in enumerate(message[1])]


def _child(todo: range, theirs: Callable[[int], object], write_fd: int) -> NoReturn:
    try:
        gc.disable()
        with os.fdopen(write_fd, "wb") as out:
            for start in range(todo.start, todo.stop, CHUNK):
                sent: list[object] = []
                for i in range(start, min(start + CHUNK, todo.stop)):
                    try:
                        sent.append(theirs(i))
                    except Exception:  # noqa: BLE001  (the parent does this file itself)
                        sent.append(None)
                blob = pickle.dumps((start, sent), protocol=pickle.HIGHEST_PROTOCOL)
                out.write(len(blob).to_bytes(_HEADER, "big"))
                out.write(blob)
                out.flush()
    finally:
        os._exit(0)  # no atexit handlers, no flushing the parent's buffers twice


class _Stream:
    """The child's length-prefixed messages. `drain` takes what the pipe holds without
    waiting, so that the child is never stopped by a full pipe while this process is busy."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()
        self._eof = False
        os.set_blocking(fd, False)

    def drain(self) -> None:
        while not self._eof:
            try:
                data = os.read(self._fd, 1 << 20)
            except BlockingIOError:
                return
            self._eof = not data
            self._buf += data

    def messages(self) -> Iterator[object]:
        """Each complete message, unpickled, waiting for more until the child closes."""
        os.set_blocking(self._fd, True)
        buf, pos = self._buf, 0  # the next message starts at pos (no copying of the rest)
        while True:
            if len(buf) - pos >= _HEADER:
                size = int.from_bytes(buf[pos:pos + _HEADER], "big")
                if len(buf) - pos - _HEADER >= size:
                    message = pickle.loads(buf[pos + _HEADER:pos + _HEADER + size])
                    pos += _HEADER + size
                    yield message
                    continue
            if self._eof:
                return
            del buf[:pos]
            pos = 0
            data = os.read(self._fd, 1 << 20)
            self._eof = not data
            buf += data
