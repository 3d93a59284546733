"""Apply stage: execute a Plan through the Runner, batched and in a fixed order.

Order (the one place it lives):
  removal phase  routes (ip -batch: route del) -> peers (remove) -> firewall
  add phase      firewall -> interface -> peers (add/update) -> routes (ip -batch: replace)
  then           config file (only when its digest changed)
The firewall sits between the phases: last when removing, first when adding. Each step is
one call (one UAPI request or one `wg set`, one `ip -batch -`, one `nft -f -`), skipped when
empty, and untouched peers never appear in it, so their sessions survive.

Secrets never reach argv: over the UAPI socket they are hex in the request; with `wg set`
they are paths of 0600 files in a private 0700 directory removed right after.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from reconciler.engine.hoststate import (
    FIREWALL_FAMILY,
    FIREWALL_TABLE,
    ROUTE_PROTO,
    Firewall,
    Peer,
    Route,
    Secrets,
)
from reconciler.engine.parsers import b64_to_hex
from reconciler.engine.plan import (
    AddPeer,
    AddRoute,
    DeleteRoute,
    Element,
    Plan,
    RemovePeer,
    ReplaceFirewall,
    SetInterface,
    UpdatePeer,
    WriteConfig,
)
from reconciler.engine.runner import Runner

STEP_NAMES = ("firewall", "interface", "peers", "routes", "config")
ZERO_KEY = "0" * 64
WG_SET_CHUNK = 1000


class StepFailed(RuntimeError):
    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"{step}: {cause}")
        self.step = step
        self.cause = cause


@dataclass(frozen=True)
class ApplyTarget:
    """Where and with what: the interface, the runner, the keys and the config file text."""

    runner: Runner
    interface: str
    secrets: Secrets
    config_text: str | None = None  # what WriteConfig writes; None with digest None = delete
    use_uapi: bool | None = None  # None: use the control socket if the interface has one

    @property
    def uapi(self) -> bool:
        return self.runner.has_uapi(self.interface) if self.use_uapi is None else self.use_uapi


def apply_plan(plan: Plan, target: ApplyTarget) -> list[str]:
    """Run the plan's steps in order; returns the steps run. Raises StepFailed(step, cause)."""
    done: list[str] = []

    def step(name: str, fn: object, *args: object) -> None:
        try:
            fn(*args)  # type: ignore[operator]
        except Exception as exc:  # any failure names its step; the engine rolls back
            raise StepFailed(name, exc) from exc
        done.append(name)

    deletes = plan.of(DeleteRoute)
    removes = plan.of(RemovePeer)
    firewall = plan.of(ReplaceFirewall)
    iface = plan.of(SetInterface)
    upserts: list[AddPeer | UpdatePeer] = [c for c in plan.changes
                                           if isinstance(c, (AddPeer, UpdatePeer))]
    adds = plan.of(AddRoute)
    config = plan.of(WriteConfig)
    if deletes:
        step("routes", apply_routes, target, [], [c.route for c in deletes])
    if removes:
        step("peers", apply_peers, target, [], [c.peer.public_key for c in removes])
    if firewall:
        step("firewall", apply_firewall, target, firewall[-1])
    if iface:
        step("interface", apply_interface, target, iface[-1])
    if upserts:
        step("peers", apply_peers, target, upserts, [])
    if adds:
        step("routes", apply_routes, target, [c.route for c in adds], [])
    if config:
        step("config", apply_config, target, config[-1])
    return done


# ------------------------------------------------------------------------------- peers


def _peer_fields(change: AddPeer | UpdatePeer) -> tuple[Peer, set[str]]:
    """The peer to write and which of its fields to send (all for a new peer)."""
    if isinstance(change, AddPeer):
        return change.peer, {"psk_digest", "keepalive", "allowed_ips"}
    return change.new, {name for name, _, _ in change.fields()}


def uapi_peer_request(upserts: Sequence[AddPeer | UpdatePeer], removes: Sequence[str],
                      secrets: Secrets) -> str:
    """One `set=1` request for every changed peer; unchanged peers are not mentioned."""
    lines = ["set=1"]
    for key in removes:
        lines += [f"public_key={b64_to_hex(key)}", "remove=true"]
    for change in upserts:
        peer, changed = _peer_fields(change)
        lines.append(f"public_key={b64_to_hex(peer.public_key)}")
        if isinstance(change, UpdatePeer):
            lines.append("update_only=true")  # a peer that vanished meanwhile is not re-made half
        if "psk_digest" in changed:
            psk = secrets.psk(peer.public_key) if peer.psk_digest else None
            if peer.psk_digest and psk is None:
                raise KeyError(f"no preshared key for peer {peer.label}")
            lines.append(f"preshared_key={b64_to_hex(psk) if psk else ZERO_KEY}")
        if "keepalive" in changed:
            lines.append(f"persistent_keepalive_interval={peer.keepalive}")
        if "allowed_ips" in changed:
            lines.append("replace_allowed_ips=true")
            lines += [f"allowed_ip={ip}" for ip in peer.allowed_ips]
    return "\n".join(lines) + "\n\n"


@contextmanager
def secret_dir() -> Iterator[Path]:
    """A private 0700 directory for key files handed to `wg` by path (never argv, never logs)."""
    path = Path(tempfile.mkdtemp(prefix="tunnelctl-", dir="/run" if os.access("/run", os.W_OK)
                                 else None))
    try:
        os.chmod(path, 0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _key_file(directory: Path, name: str, key: str) -> str:
    fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return str(directory / name)


def wg_set_peer_args(interface: str, upserts: Sequence[AddPeer | UpdatePeer],
                     removes: Sequence[str], secrets: Secrets, directory: Path,
                     offset: int = 0) -> list[str]:
    """One `wg set` argv for every changed peer; PSKs as 0600 file paths, /dev/null = none."""
    argv = ["wg", "set", interface]
    for key in removes:
        argv += ["peer", key, "remove"]
    for n, change in enumerate(upserts, start=offset):
        peer, changed = _peer_fields(change)
        argv += ["peer", peer.public_key]
        if "psk_digest" in changed:
            psk = secrets.psk(peer.public_key) if peer.psk_digest else None
            if peer.psk_digest and psk is None:
                raise KeyError(f"no preshared key for peer {peer.label}")
            argv += ["preshared-key", _key_file(directory, f"psk{n}", psk) if psk else "/dev/null"]
        if "keepalive" in changed:
            argv += ["persistent-keepalive", str(peer.keepalive) if peer.keepalive else "off"]
        if "allowed_ips" in changed:
            argv += ["allowed-ips", ",".join(peer.allowed_ips)]
    return argv


def apply_peers(target: ApplyTarget, upserts: Sequence[AddPeer | UpdatePeer],
                removes: Sequence[str]) -> None:
    if target.uapi:
        target.runner.uapi(target.interface, uapi_peer_request(upserts, removes, target.secrets),
                           write=True)
        return
    # One `wg set` per WG_SET_CHUNK peers: argv must stay well under ARG_MAX (2 MiB), which
    # ~16k peers in one call would exceed.
    with secret_dir() as directory:
        for start in range(0, max(len(removes), len(upserts)), WG_SET_CHUNK):
            argv = wg_set_peer_args(target.interface, upserts[start:start + WG_SET_CHUNK],
                                    removes[start:start + WG_SET_CHUNK], target.secrets,
                                    directory, offset=start)
            target.runner.run(argv, write=True)


# --------------------------------------------------------------------------- interface


def apply_interface(target: ApplyTarget, change: SetInterface) -> None:
    """Private key and port through WireGuard; mtu, addresses and link state in one ip -batch."""
    old, new = change.old, change.new
    fields = {name for name, _, _ in change.fields()}
    if fields & {"public_key", "listen_port"}:
        priv = target.secrets.private_key
        if "public_key" in fields and new.public_key and not priv:
            raise KeyError("no private key for the interface")
        if target.uapi:
            lines = ["set=1"]
            if "public_key" in fields:
                lines.append(f"private_key={b64_to_hex(priv) if priv else ZERO_KEY}")
            if "listen_port" in fields:
                lines.append(f"listen_port={new.listen_port}")
            target.runner.uapi(target.interface, "\n".join(lines) + "\n\n", write=True)
        else:
            with secret_dir() as directory:
                argv = ["wg", "set", target.interface]
                if "public_key" in fields:
                    argv += ["private-key", _key_file(directory, "private", priv) if priv
                             else "/dev/null"]
                if "listen_port" in fields:
                    argv += ["listen-port", str(new.listen_port)]
                target.runner.run(argv, write=True)
    batch: list[str] = []
    dev = target.interface
    if "mtu" in fields and new.mtu:
        batch.append(f"link set dev {dev} mtu {new.mtu}")
    if "address" in fields:
        have = set(old.addresses()) if old else set()
        want = set(new.addresses())
        batch += [f"address del {a} dev {dev}" for a in sorted(have - want)]
        batch += [f"address replace {a} dev {dev}" for a in sorted(want - have)]
    if "up" in fields:
        batch.append(f"link set dev {dev} {'up' if new.up else 'down'}")
    if batch:
        target.runner.run(["ip", "-batch", "-"], stdin="\n".join(batch) + "\n", write=True)


# ------------------------------------------------------------------------------ routes


def route_batch(add: Sequence[Route], delete: Sequence[Route]) -> str:
    """`ip -batch` lines. `replace` takes over a boot/wg-quick route for the same prefix."""
    lines = []
    for r in delete:
        table = "" if r.table == "main" else f" table {r.table}"
        lines.append(f"route del {r.dst} dev {r.dev} proto {r.proto}{table}")
    for r in add:
        table = "" if r.table == "main" else f" table {r.table}"
        lines.append(f"route replace {r.dst} dev {r.dev} proto {ROUTE_PROTO}{table}")
    return "\n".join(lines) + "\n"


def apply_routes(target: ApplyTarget, add: Sequence[Route], delete: Sequence[Route]) -> None:
    target.runner.run(["ip", "-batch", "-"], stdin=route_batch(add, delete), write=True)


# ---------------------------------------------------------------------------- firewall


def firewall_transaction(text: str | None, family: str = FIREWALL_FAMILY,
                         table: str = FIREWALL_TABLE) -> str:
    """One nft file = one transaction: declare (so delete cannot fail), delete, define again.
    Only our table is named; nothing else in the ruleset is touched. text None = delete only."""
    head = f"table {family} {table} {{}}\ndelete table {family} {table}\n"
    return head + (text or "")


def apply_firewall(target: ApplyTarget, change: ReplaceFirewall | Firewall | None) -> None:
    """One atomic `nft -f` transaction. When only map/set elements differ (a tenant added,
    removed or given a LAN), it deletes and adds just those elements: on 16k tenants that is
    ~10 ms instead of ~0.2 s for loading the whole table, and nothing else is rewritten. A
    refused transaction (an element changed by hand since observe) changes nothing and fails
    the step like any other; the next cycle observes again."""
    if not isinstance(change, ReplaceFirewall):  # a bare table: load it whole
        change = ReplaceFirewall(None, change)
    new = change.new
    delta = change.element_delta()
    if delta is not None and new is not None:
        target.runner.run(["nft", "-f", "-"], stdin=element_transaction(*delta, new.family,
                                                                      new.table), write=True)
        return
    if new is not None and not new.text:
        raise ValueError("firewall has no loadable text")
    target.runner.run(["nft", "-f", "-"], stdin=firewall_transaction(new.text if new else None),
                      write=True)


def element_transaction(removed: Iterable[Element], added: Iterable[Element],
                        family: str = FIREWALL_FAMILY, table: str = FIREWALL_TABLE) -> str:
    """`delete element` / `add element` statements for ("elem", map, key, value) items,
    deletions first; one file, so one transaction. A changed value is a delete plus an add."""
    lines = []
    for verb, items in (("delete", removed), ("add", added)):
        by_map: dict[str, list[str]] = {}
        for _, name, key, value in sorted(items, key=str):
            by_map.setdefault(str(name), []).append(
                f"{key} : {value}" if verb == "add" and value != "" else str(key))
        lines += [f"{verb} element {family} {table} {name} {{ {', '.join(keys)} }}"
                  for name, keys in sorted(by_map.items())]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ config


def apply_config(target: ApplyTarget, change: WriteConfig) -> None:
    path = Path(change.new.path)
    if change.new.digest is None:
        target.runner.run(["rm", "-f", "--", str(path)], write=True)
        return
    if target.config_text is None:
        raise ValueError(f"no content to write to {path}")
    target.runner.write_file(path, target.config_text, 0o600)
