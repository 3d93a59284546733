"""Single-file checks of many files on two CPUs, for cold loads of big repos.

Parsing is the expensive part of a cold load (about 100 µs a file with libyaml, against 45 µs
for the schema), so a forked child parses part of the files and sends back the plain values
(cheap to pickle, unlike models), while this process parses its part and then validates
everything. The split gives the child more files because this process also validates.

Only used when the caller asks for it (`jobs > 1`): forking is safe in the single-threaded CLI,
not necessarily inside a service with threads.
"""

from __future__ import annotations

import gc
import os
import pickle
from collections.abc import Sequence

from reconciler.repo.fileload import FileCheck, check_document
from reconciler.repo.model import Gateway, Tunnel
from reconciler.repo.yamlio import ParsedYaml, YamlProblem, parse

MIN_FILES = 2000  # below this a fork costs more than it saves
PARENT_SHARE = 0.4

Item = tuple[bytes, type[Tunnel] | type[Gateway]]


def _values_only(data: bytes) -> ParsedYaml | YamlProblem:
    parsed = parse(data)
    return ParsedYaml(parsed.value, None) if isinstance(parsed, ParsedYaml) else parsed


def _child(items: Sequence[Item], write_fd: int) -> None:
    try:
        gc.disable()
        payload = pickle.dumps([_values_only(data) for data, _ in items],
                               protocol=pickle.HIGHEST_PROTOCOL)
        with os.fdopen(write_fd, "wb") as out:
            out.write(payload)
    finally:
        os._exit(0)  # no atexit handlers, no flushing the parent's buffers twice


def check_all(items: Sequence[Item], jobs: int = 1) -> list[FileCheck]:
    """check_document for every (data, kind), in order; forks one helper when jobs > 1."""
    if jobs < 2 or len(items) < MIN_FILES or not hasattr(os, "fork"):
        return [check_document(data, kind) for data, kind in items]
    cut = int(len(items) * PARENT_SHARE)
    theirs = items[cut:]
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        return [check_document(data, kind) for data, kind in items]
    if pid == 0:
        os.close(read_fd)
        _child(theirs, write_fd)
    os.close(write_fd)
    mine = [check_document(data, kind) for data, kind in items[:cut]]
    with os.fdopen(read_fd, "rb") as inp:
        payload = inp.read()
    os.waitpid(pid, 0)
    parsed: list[ParsedYaml | YamlProblem | None]
    try:
        parsed = pickle.loads(payload)
        if len(parsed) != len(theirs):
            raise ValueError("short result")
    except Exception:  # noqa: BLE001  (the helper died: do its share here)
        parsed = [None] * len(theirs)
    return mine + [check_document(data, kind, p) for (data, kind), p in zip(theirs, parsed)]
