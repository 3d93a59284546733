"""The pre-apply checkpoint: an "apply pending" marker that carries what undoing the apply needs.

Written (0600 file in a 0700 directory, fsync, atomic rename) after the snapshot is read and
before the first host write; removed once the apply verified, or its rollback completed. A
process killed in between (kill -9, power cut, OOM) leaves it behind, and the next cycle on
the same interface, or the service at start, restores it before anything else (as nmstate's
checkpoints do): the host goes back to its state before the interrupted apply, then the cycle
converges it as usual. The file holds keys (private key, PSKs, the old config file), like the
config file in /etc/wireguard does: it never leaves the state directory and is never logged.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
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

VERSION = 1


@dataclass(frozen=True)
class Pending:
    """An apply that started and did not finish: where, by whom, and its snapshot."""

    path: Path
    interface: str
    netns: str | None
    config_path: Path | None
    pid: int
    started: float
    snapshot: Snapshot


def marker_path(directory: Path, netns: str | None, interface: str) -> Path:
    return directory / (f"{netns}.{interface}.pending" if netns else f"{interface}.pending")


def write(path: Path, snapshot: Snapshot, *, interface: str, netns: str | None,
          config_path: Path | None) -> None:
    """The marker, durably, before the first write (raises OSError: then apply nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    doc = {"version": VERSION, "pid": os.getpid(), "started": time.time(),
           "interface": interface, "netns": netns,
           "config_path": str(config_path) if config_path is not None else None,
           "state": _state_json(snapshot.state),
           "private_key": snapshot.secrets.private_key,
           "psks": dict(snapshot.secrets.psks),
           "firewall_text": snapshot.firewall_text,
           "config_content": (base64.b64encode(snapshot.config_content).decode()
                              if snapshot.config_content is not None else None)}
    atomic_write(path, json.dumps(doc, separators=(",", ":")), 0o600)


def clear(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
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
        content = doc["config_content"]
        snapshot = Snapshot(_state_from(doc["state"]),
                            Secrets(doc["private_key"], doc["psks"]),
                            doc["firewall_text"],
                            base64.b64decode(content) if content is not None else None)
        return Pending(path, str(doc["interface"]), doc["netns"],
                       Path(doc["config_path"]) if doc["config_path"] else None,
                       int(doc["pid"]), float(doc["started"]), snapshot)
    except (KeyError, TypeError, ValueError) as exc:
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


def _state_json(st: ObservedState) -> dict[str, Any]:
    i = st.interface
    fw = st.firewall
    return {
        "interface": None if i is None else [i.name, i.listen_port, i.public_key, i.address,
                                             i.mtu, i.up],
        "peers": [[p.public_key, list(p.allowed_ips), p.psk_digest, p.keepalive]
                  for p in st.peers.values()],
        # Sets in no particular order (a load makes sets of them again): sorting 5.4k routes
        # by their dataclass order and 21.8k elements by repr cost ~0.07 s per apply.
        "routes": [[r.dst, r.dev, r.table, r.proto] for r in st.routes],
        "firewall": None if fw is None else {
            "family": fw.family, "table": fw.table, "fingerprint": fw.fingerprint,
            "elements": [list(e) for e in fw.elements]},
        "config": None if st.config is None else [st.config.path, st.config.digest],
    }


def _state_from(doc: dict[str, Any]) -> ObservedState:
    i = doc["interface"]
    iface = None if i is None else InterfaceConfig(str(i[0]), int(i[1]), i[2], i[3], i[4],
                                                   bool(i[5]))
    peers = {p[0]: Peer(p[0], tuple(p[1]), p[2], int(p[3])) for p in doc["peers"]}
    routes = frozenset(Route(r[0], r[1], r[2], int(r[3])) for r in doc["routes"])
    f = doc["firewall"]
    fw = None if f is None else Firewall(f["family"], f["table"], f["fingerprint"],
                                         frozenset(tuple(e) for e in f["elements"]))
    c = doc["config"]
    config = None if c is None else ConfigFile(c[0], c[1])
    return ObservedState(iface, peers, routes, fw, config)
