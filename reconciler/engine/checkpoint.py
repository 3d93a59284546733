"""The pre-apply checkpoint: an "apply pending" marker that carries the inverse of the plan.

Written (0600 file in a 0700 directory, fsync, atomic rename) after the snapshot is read and
before the first host write; removed once the apply verified, or its rollback completed. A
process killed in between (kill -9, power cut, OOM) leaves it behind, and the next cycle on
the same interface, or the service at start, restores it before anything else (as nmstate's
checkpoints do): the host goes back to its state before the interrupted apply, then the cycle
converges it as usual.

The marker holds only what undoing the plan needs (`Inverse`): the old values of exactly the
peers, routes and table elements the plan changes, the old table (elements and listed text)
only when the plan replaces it whole, and the old interface and config file only when the
plan changes them. Restoring applies that inverse to the host as observed after the kill:
everything the plan did not touch is left as found. A one-tenant change at 16k tenants writes
a few hundred bytes instead of the whole host (issue 13: 0.2-0.35 s and +16 MiB per apply).

The old config file is kept as a hard link beside the marker (`<marker>.conf`): the config is
only ever replaced by rename (atomic_write), so the link keeps the old bytes without copying
2.9 MB; a copy is written when the state directory is on another file system. Its digest is
checked before it is written back.

The files hold keys (the PSKs of the changed peers, the private key when the interface key
changes, the old config file), like the config file in /etc/wireguard does: they never leave
the state directory and are never logged.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from reconciler.engine.files import atomic_write
from reconciler.engine.hoststate import (
    ConfigFile,
    Firewall,
    InterfaceConfig,
    ObservedState,
    Peer,
    Route,
    Secrets,
)
from reconciler.engine.observe import Snapshot
from reconciler.engine.plan import (
    AddPeer,
    AddRoute,
    DeleteRoute,
    Plan,
    RemovePeer,
    ReplaceFirewall,
    SetInterface,
    UpdatePeer,
    WriteConfig,
)

VERSION = 2  # 1 held the whole snapshot; such a marker is discarded as unreadable

Element = tuple[str | int, ...]


@dataclass(frozen=True)
class FirewallUndo:
    """How to put the table back: its old elements in place of the changed ones (an element
    transaction), or, when the plan loads it whole, the old table itself (None: absent)."""

    removed: frozenset[Element] = frozenset()  # elements the plan deletes (undo: add back)
    added: frozenset[Element] = frozenset()  # elements the plan adds (undo: delete)
    whole: bool = False
    old: Firewall | None = None  # whole only: the table before (elements and listed text)


@dataclass(frozen=True)
class Inverse:
    """The old values of exactly what one plan changes; `over(current)` is the host to go
    back to. `secrets` holds the keys undoing needs: the changed peers' PSKs and the private
    key when the interface changes."""

    peers: Mapping[str, Peer | None]  # every peer the plan touches: its old value, None = absent
    routes_added: frozenset[Route]
    routes_deleted: frozenset[Route]
    firewall: FirewallUndo | None  # None: the plan leaves the table alone
    interface: tuple[InterfaceConfig | None] | None  # (old,) when the plan changes it
    config: tuple[ConfigFile | None] | None  # (old,) when the plan writes the config file
    secrets: Secrets
    config_content: bytes | None  # the old config file (when written and present)

    @staticmethod
    def of(plan: Plan, snapshot: Snapshot) -> Inverse:
        """The inverse of `plan` with the keys and texts `snapshot` read before it."""
        peers: dict[str, Peer | None] = {}
        added: list[Route] = []
        deleted: list[Route] = []
        fw: ReplaceFirewall | None = None
        iface: SetInterface | None = None
        config: WriteConfig | None = None
        for c in plan.changes:  # one pass: a cold converge plans 21.8k changes
            if isinstance(c, AddPeer):
                peers[c.peer.public_key] = None
            elif isinstance(c, AddRoute):
                added.append(c.route)
            elif isinstance(c, UpdatePeer):
                peers[c.old.public_key] = c.old
            elif isinstance(c, RemovePeer):
                peers[c.peer.public_key] = c.peer
            elif isinstance(c, DeleteRoute):
                deleted.append(c.route)
            elif isinstance(c, ReplaceFirewall):
                fw = c
            elif isinstance(c, SetInterface):
                iface = iface or c
            elif isinstance(c, WriteConfig):
                config = c
        fw_undo = _firewall_undo(fw, snapshot.firewall_text) if fw is not None else None
        have = snapshot.secrets.psks
        psks = {k: have[k] for k, old in peers.items() if old is not None and k in have}
        priv = snapshot.secrets.private_key if iface is not None else None
        return Inverse(peers, frozenset(added), frozenset(deleted), fw_undo,
                       (iface.old,) if iface is not None else None,
                       (config.old,) if config is not None else None, Secrets(priv, psks),
                       snapshot.config_content if config is not None else None)

    def over(self, current: ObservedState) -> Snapshot:
        """The state to restore: `current` with every changed value put back (pure)."""
        peers = dict(current.peers)
        for key, old in self.peers.items():
            if old is None:
                peers.pop(key, None)
            else:
                peers[key] = old
        routes = (current.routes - self.routes_added) | self.routes_deleted
        firewall, text = current.firewall, None
        undo = self.firewall
        if undo is not None and undo.whole:
            firewall = undo.old
            text = undo.old.text if undo.old is not None else None
        elif undo is not None and firewall is not None:
            elements = (firewall.elements - undo.added) | undo.removed
            if elements != firewall.elements:
                firewall = replace(firewall, fingerprint=Firewall.digest(elements),
                                   elements=frozenset(elements))
        # A table gone meanwhile: an element transaction is atomic, so there is nothing half
        # done to undo in it; the cycle that follows loads the desired table.
        iface = self.interface[0] if self.interface is not None else current.interface
        config = self.config[0] if self.config is not None else current.config
        state = ObservedState(iface, peers, frozenset(routes), firewall, config)
        return Snapshot(state, self.secrets, text, self.config_content)


def _firewall_undo(change: ReplaceFirewall, text: str | None) -> FirewallUndo:
    delta = change.element_delta()
    if delta is not None:
        return FirewallUndo(removed=delta[0], added=delta[1])
    old = change.old
    if old is not None:
        if text is None:
            raise ValueError("the table's text was not read before replacing it whole")
        old = replace(old, text=text)
    return FirewallUndo(whole=True, old=old)


@dataclass(frozen=True)
class Pending:
    """An apply that started and did not finish: where, by whom, and how to undo it."""

    path: Path
    interface: str
    netns: str | None
    config_path: Path | None
    pid: int
    started: float
    inverse: Inverse


def marker_path(directory: Path, netns: str | None, interface: str) -> Path:
    return directory / (f"{netns}.{interface}.pending" if netns else f"{interface}.pending")


def config_copy_path(marker: Path) -> Path:
    return marker.with_name(marker.name + ".conf")


def write(path: Path, inverse: Inverse, *, interface: str, netns: str | None,
          config_path: Path | None) -> None:
    """The marker, durably, before the first write (raises OSError: then apply nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    side = config_copy_path(path)
    side.unlink(missing_ok=True)
    if inverse.config_content is not None:
        _keep_config(config_path, inverse.config_content, side)
    doc = {"version": VERSION, "pid": os.getpid(), "started": time.time(),
           "interface": interface, "netns": netns,
           "config_path": str(config_path) if config_path is not None else None,
           "inverse": _inverse_json(inverse)}
    # The marker's rename and directory fsync also make the link beside it durable.
    atomic_write(path, json.dumps(doc, separators=(",", ":")), 0o600)


def _keep_config(config_path: Path | None, content: bytes, side: Path) -> None:
    """The old config file beside the marker: a hard link when it is still that file on the
    same file system, else a copy (0600)."""
    if config_path is not None:
        try:
            if config_path.read_bytes() == content:
                os.link(config_path, side)
                return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOENT, errno.EPERM, errno.EMLINK):
                raise
    fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())


def clear(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        config_copy_path(path).unlink(missing_ok=True)
        return
    config_copy_path(path).unlink(missing_ok=True)  # without its marker it means nothing
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: Path) -> Pending | None:
    """The pending apply at `path`, None when there is none; ValueError when unreadable."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable checkpoint: {exc}") from None
    try:
        if doc.get("version") != VERSION:
            raise ValueError(f"version {doc.get('version')!r}")
        inverse = _inverse_from(doc["inverse"], config_copy_path(path))
        return Pending(path, str(doc["interface"]), doc["netns"],
                       Path(doc["config_path"]) if doc["config_path"] else None,
                       int(doc["pid"]), float(doc["started"]), inverse)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"{path}: unreadable checkpoint: {exc}") from None


def pending_in(directory: Path, netns: str | None) -> list[Path]:
    """Markers left in `directory` for targets in `netns` (None: the host's own)."""
    if not directory.is_dir():
        return []
    out = []
    for p in sorted(directory.glob("*.pending")):
        stem = p.name.removesuffix(".pending")
        ns = stem.rsplit(".", 1)[0] if "." in stem else None
        if ns == netns:
            out.append(p)
    return out


# ------------------------------------------------------------------------ (de)serialise


def _inverse_json(inv: Inverse) -> dict[str, Any]:
    fw = inv.firewall
    return {
        "peers": {k: None if p is None else [list(p.allowed_ips), p.psk_digest, p.keepalive]
                  for k, p in inv.peers.items()},
        "psks": dict(inv.secrets.psks),
        "private_key": inv.secrets.private_key,
        "routes_added": [_route_json(r) for r in inv.routes_added],
        "routes_deleted": [_route_json(r) for r in inv.routes_deleted],
        "firewall": None if fw is None else {
            "removed": [list(e) for e in fw.removed], "added": [list(e) for e in fw.added],
            "whole": fw.whole, "old": None if fw.old is None else _firewall_json(fw.old)},
        "interface": None if inv.interface is None else [_iface_json(inv.interface[0])],
        "config": None if inv.config is None else [
            None if inv.config[0] is None else [inv.config[0].path, inv.config[0].digest]],
        "config_kept": inv.config_content is not None,
    }


def _inverse_from(doc: dict[str, Any], side: Path) -> Inverse:
    peers = {k: None if p is None else Peer(k, tuple(p[0]), p[1], int(p[2]))
             for k, p in doc["peers"].items()}
    f = doc["firewall"]
    fw = None if f is None else FirewallUndo(
        frozenset(tuple(e) for e in f["removed"]), frozenset(tuple(e) for e in f["added"]),
        bool(f["whole"]), None if f["old"] is None else _firewall_from(f["old"]))
    i = doc["interface"]
    c = doc["config"]
    config = None if c is None else (None if c[0] is None else ConfigFile(c[0][0], c[0][1]),)
    content = None
    if doc["config_kept"]:
        content = side.read_bytes()  # OSError: unreadable, like the marker itself
        old = config[0] if config is not None else None
        if old is not None and old.digest is not None and \
                ConfigFile.digest_of(content) != old.digest:
            raise ValueError("the kept config file is not the one replaced")
    return Inverse(peers, frozenset(_route_from(r) for r in doc["routes_added"]),
                   frozenset(_route_from(r) for r in doc["routes_deleted"]), fw,
                   None if i is None else (_iface_from(i[0]),), config,
                   Secrets(doc["private_key"], doc["psks"]), content)


def _route_json(r: Route) -> list[Any]:
    return [r.dst, r.dev, r.table, r.proto]


def _route_from(r: list[Any]) -> Route:
    return Route(r[0], r[1], r[2], int(r[3]))


def _iface_json(i: InterfaceConfig | None) -> list[Any] | None:
    return None if i is None else [i.name, i.listen_port, i.public_key, i.address, i.mtu, i.up]


def _iface_from(i: list[Any] | None) -> InterfaceConfig | None:
    return None if i is None else InterfaceConfig(str(i[0]), int(i[1]), i[2], i[3], i[4],
                                                  bool(i[5]))


def _firewall_json(fw: Firewall) -> dict[str, Any]:
    # Sets in no particular order (a load makes sets of them again).
    return {"family": fw.family, "table": fw.table, "fingerprint": fw.fingerprint,
            "elements": [list(e) for e in fw.elements], "text": fw.text}


def _firewall_from(f: dict[str, Any]) -> Firewall:
    return Firewall(f["family"], f["table"], f["fingerprint"],
                    frozenset(tuple(e) for e in f["elements"]), f["text"])
