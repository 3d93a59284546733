"""The host state the engine last verified, and when a change may be planned against it.

A full cycle reads everything the reconciler owns (on 16k tenants ~0.5 s: the wg dump, the
nft listing of 16k map elements, parsing both). A service applying one merged commit right
after such a cycle need not pay that twice: it plans the new desired state against what the
last verification saw, applies, and reads back only what it changed (observe_changes). That is
the one-tenant change path; everything else stays level-triggered:

- only a *changed* desired state takes this path; enforcing the same state again (every
  no-op and drift-repair cycle) always observes in full, and refreshes what is remembered;
- the remembered state must come from a full observation less than TRUST_SECONDS ago, and
  the interface config file must still have the digest seen then (any other tunnelctl that
  applied since rewrote it);
- the plan must be small, leave the interface alone, and change the firewall by tenant-map
  elements only (what observe_changes can read back); otherwise the cycle observes in full;
- an entry is taken out for the cycle and put back only after a verified result, so any
  failure falls back to a full observation next time.

Drift made by hand between cycles is repaired by the next full cycle, as before.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from reconciler.engine.hoststate import HostState, ObservedState
from reconciler.engine.observe import read_config_digest
from reconciler.engine.plan import (
    AddPeer,
    AddRoute,
    DeleteRoute,
    Plan,
    RemovePeer,
    ReplaceFirewall,
    UpdatePeer,
    WriteConfig,
)
from reconciler.engine.readback import fast_verifiable

TRUST_SECONDS = 60.0  # two default service intervals
MAX_CHANGES = 64  # peer and route changes; bigger plans are dominated by apply anyway

Key = tuple[str | None, str, str]  # (netns, interface, config path)


@dataclass(frozen=True)
class Verified:
    desired: HostState
    observed: ObservedState  # what verify read (or `observed` patched with what it re-read)
    full_at: float  # time.monotonic() of the last full observation this descends from


_entries: dict[Key, Verified] = {}
_lock = threading.Lock()


def take(key: Key) -> Verified | None:
    """Remove and return the entry: the cycle owns it until it remembers a new one."""
    with _lock:
        return _entries.pop(key, None)


def remember(key: Key, desired: HostState, observed: ObservedState, full_at: float) -> None:
    with _lock:
        _entries[key] = Verified(desired, observed, full_at)


def usable(entry: Verified | None, desired: HostState, config_path: Path | None,
           now: float | None = None) -> ObservedState | None:
    """The remembered host state when a change of desired state may be planned against it."""
    if entry is None or entry.desired is desired:
        return None
    if (now if now is not None else time.monotonic()) - entry.full_at > TRUST_SECONDS:
        return None
    seen = entry.observed.config
    if config_path is not None and seen is not None and \
            read_config_digest(config_path) != seen.digest:
        return None
    return entry.observed


def small_change(plan: Plan) -> bool:
    """A plan the change path can apply and read back (see the module docstring)."""
    if plan.empty:
        return False  # nothing to do per memory: let a full observation confirm it
    counted = 0
    for c in plan.changes:
        if isinstance(c, (AddPeer, RemovePeer, UpdatePeer, AddRoute, DeleteRoute)):
            counted += 1
        elif isinstance(c, ReplaceFirewall):
            if not fast_verifiable(c):
                return False
        elif not isinstance(c, WriteConfig):
            return False  # SetInterface (or anything new): observe in full
    return counted <= MAX_CHANGES
