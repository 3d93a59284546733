"""Undoing an apply: the in-memory snapshot restored after a failed step or verify, and the
checkpoint a killed apply left on disk restored before the next cycle (or at service start).
Both converge the host back with the same plan and apply as a forward cycle.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from reconciler.engine import checkpoint
from reconciler.engine.apply import ApplyTarget, apply_plan
from reconciler.engine.hostboot import persisted_text
from reconciler.engine.hoststate import HostState, ObservedState, Secrets
from reconciler.engine.observe import Snapshot, observe
from reconciler.engine.plan import plan
from reconciler.engine.psk import psk_digest
from reconciler.engine.runner import Runner
from reconciler.engine.target import HostTarget, LockBusy, host_lock

log = logging.getLogger("tunnelctl.engine")


def recover(target: HostTarget, runner: Runner, interface: str) -> str | None:
    """Under the lock: restore the checkpoint a killed apply on this interface left behind.
    Returns what happened, None when nothing was pending. The marker goes either way: the
    cycle that follows converges the host whatever the restore managed."""
    path = target.checkpoint_path(interface)
    try:
        pending = checkpoint.load(path)
    except ValueError as exc:
        checkpoint.clear(path)
        log.error("%s", exc)
        return f"checkpoint unreadable, discarded: {exc}"
    if pending is None:
        return None
    log.warning("an apply on %s by pid %d was interrupted at %.0f; restoring its checkpoint",
                interface, pending.pid, pending.started)
    # The checkpoint is the plan's inverse: applied over the host as it is now, it puts back
    # exactly what the killed apply may have changed and leaves the rest as found.
    error: str | None
    try:
        current: ObservedState | None = observe(runner, interface,
                                                config_path=pending.config_path)
    except Exception as exc:  # noqa: BLE001 - reported; the cycle then converges anyway
        current, error = None, f"cannot observe the host: {type(exc).__name__}: {exc}"
    if current is not None:
        error = restore(pending.inverse.over(current), runner, interface, pending.config_path,
                        fallback_firewall=target.firewall_path, current=current)
    checkpoint.clear(path)
    if error:
        log.error("restoring the interrupted apply's checkpoint on %s: %s", interface, error)
        return f"interrupted apply of pid {pending.pid}: restore incomplete ({error})"
    return f"interrupted apply of pid {pending.pid}: host restored to its checkpoint"


def recover_interrupted(target: HostTarget, runner: Runner | None = None) -> list[str]:
    """Every checkpoint left for this target's namespace, restored under its interface's lock
    (the service calls this at start, before anything else). Returns what happened."""
    runner = runner or Runner(netns=target.netns)
    out = []
    for path in checkpoint.pending_in(target.checkpoint_dir, target.netns):
        interface = path.name.removesuffix(".pending").rsplit(".", 1)[-1]
        try:
            with host_lock(target, interface):
                done = recover(target, runner, interface)
        except LockBusy as exc:
            done = f"{interface}: not recovered yet ({exc})"
        if done is not None:
            out.append(done)
    return out


def with_desired_secrets(snapshot: Snapshot, desired: HostState, secrets: Secrets,
                         keys: Iterable[str] | None = None) -> Snapshot:
    """The snapshot's keys completed from the desired ones wherever they are the same key
    (same PSK digest, same public key): read_snapshot reads keys only for what the plan
    touches, but a restore may have to re-add any peer (wireguard-go restarted meanwhile).
    `keys`: only those peers' (the checkpoint's), instead of all 16k."""
    st = snapshot.state
    psks = dict(snapshot.secrets.psks)
    wanted = desired.peers
    peers = st.peers.items() if keys is None else \
        [(k, st.peers[k]) for k in keys if k in st.peers]
    for key, peer in peers:
        if key not in psks and peer.psk_digest is not None:
            want = secrets.psk(key)
            if want is None:
                continue
            # The desired peer carries its PSK's digest already: no hashing of 16k keys.
            same = wanted.get(key)
            digest = same.psk_digest if same is not None else psk_digest(want)
            if digest == peer.psk_digest:
                psks[key] = want
    priv = snapshot.secrets.private_key
    if (priv is None and st.interface is not None and desired.interface is not None
            and st.interface.public_key == desired.interface.public_key):
        priv = secrets.private_key
    return replace(snapshot, secrets=Secrets(priv, psks))


def snapshot_state(snapshot: Snapshot) -> HostState:
    """The snapshot as a desired state: its firewall carries the listed text to load back."""
    st = snapshot.state
    fw = replace(st.firewall, text=snapshot.firewall_text or "") if st.firewall else None
    return HostState(st.interface, st.peers, st.routes, fw, st.config)


def restore(snapshot: Snapshot, runner: Runner, interface: str, config_path: Path | None,
            *, fallback_firewall: Path | None = None,
            current: ObservedState | None = None) -> str | None:
    """Converge the host back to the snapshot (peers with their PSKs, routes, firewall text,
    config file). Returns None when the host matches the snapshot again, else why not.

    A snapshot without the table's text (an element-only change) that must load the whole
    table (it vanished meanwhile) takes the persisted table when that is the same table."""
    if (snapshot.firewall_text is None and snapshot.state.firewall is not None
            and fallback_firewall is not None):
        text = persisted_text(fallback_firewall, snapshot.state.firewall.fingerprint)
        if text is not None:
            snapshot = replace(snapshot, firewall_text=text)
    want = snapshot_state(snapshot)
    content = snapshot.config_content.decode() if snapshot.config_content is not None else None
    try:
        if current is None:
            current = observe(runner, interface, config_path=config_path)
        back = plan(want, current)
        if not back.empty:
            apply_plan(back, ApplyTarget(runner, interface, snapshot.secrets, content))
        left = plan(want, observe(runner, interface, config_path=config_path))
    except Exception as exc:  # noqa: BLE001 - report it, never mask the original failure
        return f"{type(exc).__name__}: {exc}"
    return None if left.empty else left.summary_line()
