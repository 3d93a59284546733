"""The interpreter's side of a cycle: the cyclic garbage collector paused and a short GIL
switch interval while it runs (both process-wide, so overlapping cycles share them: the
first to start sets them, the last to end puts them back), and the reads and writes it
starts in threads beside its stages.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TypeVar

from reconciler.repo.gcpause import gc_paused

__all__ = ["SWITCH_INTERVAL", "gc_paused", "prompt_threads", "started"]

T = TypeVar("T")

SWITCH_INTERVAL = 0.0005  # seconds; Python's default is 0.005
_switching = threading.Lock()
_prompt_depth = 0
_interval_before = 0.0


@contextmanager
def prompt_threads() -> Iterator[None]:
    """A shorter GIL switch interval while any cycle runs. A cycle reads large outputs of
    other processes in threads (the wg dump: 2 MB at 16k peers, read in 32 KB chunks) beside
    CPU-bound work in the main thread (parsing, planning): at the default interval a reader
    waits up to 5 ms for the GIL per chunk, the pipe fills and the writer stalls (a 0.1 s
    dump took 0.3-1 s in a cold converge's verify). At 0.5 ms it reads at nearly full speed,
    for a few more GIL hand-overs when threads compete. The first of overlapping cycles sets
    it, the last restores it."""
    global _prompt_depth, _interval_before
    with _switching:
        if _prompt_depth == 0:
            _interval_before = sys.getswitchinterval()
            sys.setswitchinterval(min(_interval_before, SWITCH_INTERVAL))
        _prompt_depth += 1
    try:
        yield
    finally:
        with _switching:
            _prompt_depth -= 1
            if _prompt_depth == 0:
                sys.setswitchinterval(_interval_before)


def started(work: Callable[[], T], name: str) -> Future[T]:
    """`work` running now in a daemon thread called `name`; its result, or what it raised,
    where the future is awaited (a cycle that fails meanwhile simply never awaits it)."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:  # noqa: BLE001 - raised where the result is awaited
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
