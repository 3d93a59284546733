"""The cyclic garbage collector paused around bulk work (a load, a cycle). In the lowest layer
because the load uses it and every layer above may import it.

Thousands of small objects (16k tenant models, a cycle's peers, routes and parsed output) are
made at once: collection passes meanwhile only cost time, reference counting frees what is
dropped. What survives the pause would all sit in the youngest generation when the collector
is turned back on, and the next allocation would trigger a pass over every one of them (~0.1 s
after a 16k-tenant cycle, timed inside whatever runs next). They are moved to the oldest
generation instead (`gc.freeze()` then `gc.unfreeze()`: two list splices, no walk), which is
where long-lived objects end anyway; a full collection still finds any cycle among them (the
service runs one between cycles)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """The collector off inside; nested pauses leave it to the outermost one."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.freeze()  # every tracked object into the permanent generation...
            gc.unfreeze()  # ...and from there into the oldest: survivors are old, not young
            gc.enable()
