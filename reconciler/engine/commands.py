"""Commands stage: a Plan -> the exact payloads apply runs, in apply's order. Pure.

Order (the one place it lives):
  removal phase  routes (ip -batch: route del) -> peers (remove) -> firewall
  add phase      firewall -> interface -> peers (add/update) -> routes (ip -batch: replace)
  then           config file (only when its digest changed)
The firewall sits between the phases: last when removing, first when adding. A big plan
that loads the table from nothing splits it (split_load): the structure with empty tenant maps
first, the maps' elements ("elements") right after the peers. Each step is
one call (one UAPI request or one `wg set`, one `ip -batch -`, one `nft -f -` or one netlink
batch of map elements), and untouched peers never appear in it, so their sessions survive.

Secrets are part of the payloads (hex in a UAPI request, a `KeyFile` the running side writes
0600 and names by path in argv, the config file text) and nowhere else: every command's
`redacted()` form shows them as "(redacted)", and no repr includes them. Nothing here runs
a process, opens a socket or creates a file; apply.py does, from these values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

from reconciler.engine import nftbatch
from reconciler.engine.hoststate import (
    ROUTE_PROTO,
    TENANT_MAPS,
    Peer,
    Route,
    Secrets,
)
from reconciler.engine.nft_transactions import (
    INTERVAL_DELETE_LIMIT,
    element_transaction,
    firewall_transaction,
    interval_deletes,
    tenant_elements,
    without_tenant_elements,
)
from reconciler.engine.nftbatch import Message
from reconciler.engine.parsers import b64_to_hex
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

ZERO_KEY = "0" * 64  # UAPI's "no key": not a secret, so shown as it is
WG_SET_CHUNK = 1000
REDACTED = "(redacted)"
UAPI_SECRET_FIELDS = frozenset({"private_key", "preshared_key"})
CONFIG_SECRET_FIELDS = frozenset({"privatekey", "presharedkey"})


class StepFailed(RuntimeError):
    """A step could not be built or run; names the step so the engine can report and roll back."""

    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"{step}: {cause}")
        self.step = step
        self.cause = cause


# ---------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class KeyFile:
    """A key handed to `wg` by path: the running side writes it to a 0600 file called `name`
    in a private 0700 directory, puts that path in argv and removes it afterwards."""

    name: str
    key: str = field(repr=False)

    @property
    def content(self) -> str:
        return self.key + "\n"


Arg = str | KeyFile


@dataclass(frozen=True)
class Exec:
    """One process: argv (secrets only as KeyFile) and stdin (never a secret)."""

    argv: tuple[Arg, ...]
    stdin: str | None = None

    @property
    def key_files(self) -> tuple[KeyFile, ...]:
        return tuple(a for a in self.argv if isinstance(a, KeyFile))

    def redacted(self) -> str:
        words = [f"<0600 file {a.name}: {REDACTED}>" if isinstance(a, KeyFile) else _quote(a)
                 for a in self.argv]
        return _block(" ".join(words), self.stdin)


@dataclass(frozen=True)
class UapiSet:
    """One `set=1` request on wireguard-go's control socket; keys are hex in the request."""

    interface: str
    request: str = field(repr=False)

    def redacted(self) -> str:
        lines = []
        for line in self.request.rstrip("\n").split("\n"):
            name, sep, value = line.partition("=")
            secret = sep and name in UAPI_SECRET_FIELDS and value != ZERO_KEY
            lines.append(f"{name}={REDACTED}" if secret else line)
        return _block(f"uapi {self.interface} (control socket)", "\n".join(lines))


@dataclass(frozen=True)
class WriteFile:
    """An atomic file write (temp file, fsync, rename) with an exact mode."""

    path: str
    content: str = field(repr=False)
    mode: int = 0o600

    def redacted(self) -> str:
        lines = []
        for line in self.content.rstrip("\n").split("\n"):
            name, sep, _ = line.partition("=")
            secret = sep and name.strip().lower() in CONFIG_SECRET_FIELDS
            lines.append(f"{name.rstrip()} = {REDACTED}" if secret else line)
        return _block(f"write {_quote(self.path)} (mode {self.mode:04o})", "\n".join(lines))


@dataclass(frozen=True)
class NftElements:
    """An element transaction of the tenant maps, sent as one nf_tables netlink batch
    (reconciler.engine.nftbatch): the same transaction as `nft -f -` of `stdin`, without
    nft's fetch of every element first. A runner that cannot send it runs `stdin` instead."""

    messages: tuple[Message, ...] = field(repr=False)
    stdin: str

    def redacted(self) -> str:
        return _block("nft -f - (sent as one netlink batch)", self.stdin)


Command = Exec | UapiSet | WriteFile | NftElements


@dataclass(frozen=True)
class Step:
    """One named step of apply; its commands run in order. A step may have none (an interface
    change that needs no call) and still counts as done."""

    name: str  # firewall | interface | peers | routes | config
    commands: tuple[Command, ...]

    def redacted(self) -> str:
        return "\n".join(f"[{self.name}] {c.redacted()}" for c in self.commands)


def _quote(word: str) -> str:
    """Display only (nothing here reaches a shell): quote words a reader could misparse."""
    if word and all(ch.isalnum() or ch in "-_./:,=+@%" for ch in word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def _block(head: str, body: str | None) -> str:
    if body is None:
        return head
    return head + "".join(f"\n    {line}" if line else "\n" for line in body.rstrip("\n").split("\n"))


def render_commands(steps: Iterable[Step]) -> str:
    """Every command of every step, secrets redacted: what `apply --dry-run` prints."""
    return "\n".join(s.redacted() for s in steps if s.commands)


# ------------------------------------------------------------------------------- order


def commands_for(plan: Plan, interface: str, secrets: Secrets, *, uapi: bool,
                 config_text: str | None = None) -> tuple[Step, ...]:
    """The steps apply runs for `plan`, in order. Raises StepFailed(step, cause) when a step
    cannot be built (a missing key or config text)."""
    return tuple(iter_steps(plan, interface, secrets, uapi=uapi, config_text=config_text))


def iter_steps(plan: Plan, interface: str, secrets: Secrets, *, uapi: bool,
               config_text: str | None = None) -> Iterator[Step]:
    """commands_for, one step at a time: apply builds a step only when the ones before it
    ran, so a step that cannot be built fails where it stands, as a failed run would."""
    deletes = plan.of(DeleteRoute)
    removes = plan.of(RemovePeer)
    firewall = plan.of(ReplaceFirewall)
    iface = plan.of(SetInterface)
    upserts: list[AddPeer | UpdatePeer] = [c for c in plan.changes
                                           if isinstance(c, (AddPeer, UpdatePeer))]
    adds = plan.of(AddRoute)
    config = plan.of(WriteConfig)
    if deletes:
        yield _step("routes", route_commands, [], [c.route for c in deletes])
    if removes:
        yield _step("peers", peer_commands, interface, [], [c.peer.public_key for c in removes],
                    secrets, uapi)
    split = split_load(plan)
    if firewall:
        yield _step("firewall", firewall_commands, firewall[-1], split)
    if iface:
        yield _step("interface", interface_commands, interface, iface[-1], secrets, uapi)
    if upserts:
        yield _step("peers", peer_commands, interface, upserts, [], secrets, uapi)
    if split:
        yield _step("elements", tenant_element_commands, firewall[-1])
    if adds:
        yield _step("routes", route_commands, [c.route for c in adds], [])
    if config:
        yield _step("config", config_commands, config[-1], config_text)


def _step(name: str, build: Callable[..., tuple[Command, ...]], *args: object) -> Step:
    try:
        return Step(name, build(*args))
    except Exception as exc:  # any failure names its step; the engine rolls back
        raise StepFailed(name, exc) from exc


# ------------------------------------------------------------------------------- peers


def _peer_fields(change: AddPeer | UpdatePeer) -> tuple[Peer, set[str]]:
    """The peer to write and which of its fields to send (all for a new peer)."""
    if isinstance(change, AddPeer):
        return change.peer, {"psk_digest", "keepalive", "allowed_ips"}
    return change.new, {name for name, _, _ in change.fields()}


def _psk(peer: Peer, secrets: Secrets) -> str | None:
    psk = secrets.psk(peer.public_key) if peer.psk_digest else None
    if peer.psk_digest and psk is None:
        raise KeyError(f"no preshared key for peer {peer.label}")
    return psk


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
            psk = _psk(peer, secrets)
            lines.append(f"preshared_key={b64_to_hex(psk) if psk else ZERO_KEY}")
        if "keepalive" in changed:
            lines.append(f"persistent_keepalive_interval={peer.keepalive}")
        if "allowed_ips" in changed:
            lines.append("replace_allowed_ips=true")
            lines += [f"allowed_ip={ip}" for ip in peer.allowed_ips]
    return "\n".join(lines) + "\n\n"


def wg_set_peer_args(interface: str, upserts: Sequence[AddPeer | UpdatePeer],
                     removes: Sequence[str], secrets: Secrets, offset: int = 0) -> Exec:
    """One `wg set` for these peers; PSKs as 0600 key files psk<n>, /dev/null = none."""
    argv: list[Arg] = ["wg", "set", interface]
    for key in removes:
        argv += ["peer", key, "remove"]
    for n, change in enumerate(upserts, start=offset):
        peer, changed = _peer_fields(change)
        argv += ["peer", peer.public_key]
        if "psk_digest" in changed:
            psk = _psk(peer, secrets)
            argv += ["preshared-key", KeyFile(f"psk{n}", psk) if psk else "/dev/null"]
        if "keepalive" in changed:
            argv += ["persistent-keepalive", str(peer.keepalive) if peer.keepalive else "off"]
        if "allowed_ips" in changed:
            argv += ["allowed-ips", ",".join(peer.allowed_ips)]
    return Exec(tuple(argv))


def peer_commands(interface: str, upserts: Sequence[AddPeer | UpdatePeer],
                  removes: Sequence[str], secrets: Secrets, uapi: bool) -> tuple[Command, ...]:
    if uapi:
        return (UapiSet(interface, uapi_peer_request(upserts, removes, secrets)),)
    # One `wg set` per WG_SET_CHUNK peers: argv must stay well under ARG_MAX (2 MiB), which
    # ~16k peers in one call would exceed.
    return tuple(wg_set_peer_args(interface, upserts[start:start + WG_SET_CHUNK],
                                  removes[start:start + WG_SET_CHUNK], secrets, offset=start)
                 for start in range(0, max(len(removes), len(upserts)), WG_SET_CHUNK))


# --------------------------------------------------------------------------- interface


def interface_commands(interface: str, change: SetInterface, secrets: Secrets,
                       uapi: bool) -> tuple[Command, ...]:
    """Private key and port through WireGuard; mtu, addresses and link state in one ip -batch."""
    old, new = change.old, change.new
    fields = {name for name, _, _ in change.fields()}
    out: list[Command] = []
    if fields & {"public_key", "listen_port"}:
        priv = secrets.private_key
        if "public_key" in fields and new.public_key and not priv:
            raise KeyError("no private key for the interface")
        if uapi:
            lines = ["set=1"]
            if "public_key" in fields:
                lines.append(f"private_key={b64_to_hex(priv) if priv else ZERO_KEY}")
            if "listen_port" in fields:
                lines.append(f"listen_port={new.listen_port}")
            out.append(UapiSet(interface, "\n".join(lines) + "\n\n"))
        else:
            argv: list[Arg] = ["wg", "set", interface]
            if "public_key" in fields:
                argv += ["private-key", KeyFile("private", priv) if priv else "/dev/null"]
            if "listen_port" in fields:
                argv += ["listen-port", str(new.listen_port)]
            out.append(Exec(tuple(argv)))
    batch: list[str] = []
    dev = interface
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
        out.append(Exec(("ip", "-batch", "-"), "\n".join(batch) + "\n"))
    return tuple(out)


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


def route_commands(add: Sequence[Route], delete: Sequence[Route]) -> tuple[Command, ...]:
    return (Exec(("ip", "-batch", "-"), route_batch(add, delete)),)


# ---------------------------------------------------------------------------- firewall


# A big plan (a cold converge): apply builds its steps ahead and runs its peer step beside
# the steps after it, and a table it loads from nothing is loaded in two parts: the
# structure with empty tenant maps before the peers, the maps' elements beside them
# (engine/nft_transactions.py says why that isolates all along). The peers then wait for a
# ~20 ms `nft -f` instead of ~0.2 s, and the elements' `nft -f` runs while wireguard-go
# takes the peers (~1.3 s at 16k). Smaller plans keep the one transaction, in order.
BIG_PLAN = 256
SPLIT_LOAD_MIN = BIG_PLAN


def split_load(plan: Plan) -> bool:
    """Whether the plan's firewall step loads the table from nothing in two parts."""
    firewall = plan.of(ReplaceFirewall)
    if len(plan) < SPLIT_LOAD_MIN or len(firewall) != 1:
        return False
    new = firewall[0].new
    return (firewall[0].old is None and new is not None and bool(new.text)
            and any(e[0] == "elem" and e[1] in TENANT_MAPS for e in new.elements))


def tenant_element_commands(change: ReplaceFirewall) -> tuple[Command, ...]:
    """The second part of a split load: every tenant map element, one `nft -f`."""
    assert change.new is not None
    new = change.new
    added = tenant_elements(new.elements)
    return (Exec(("nft", "-f", "-"), element_transaction((), added, new.family, new.table)),)


def firewall_commands(change: ReplaceFirewall, split: bool = False) -> tuple[Command, ...]:
    """One atomic transaction. When only map/set elements differ (a tenant added, removed
    or given a LAN), it deletes and adds just those elements: on 16k tenants that is ~10 ms
    instead of ~0.2 s for loading the whole table, and nothing else is rewritten; in the
    tenant maps it is a netlink batch (NftElements), elsewhere `nft -f`. A refused
    transaction (an element changed by hand since observe) changes nothing and fails the
    step like any other; the next cycle observes again. Many LAN removals load the table
    whole instead (see INTERVAL_DELETE_LIMIT)."""
    new = change.new
    delta = change.element_delta()
    if delta is not None and new is not None and (
            interval_deletes(delta[0]) <= INTERVAL_DELETE_LIMIT or not new.text):
        text = element_transaction(*delta, new.family, new.table)
        old = change.old.elements if change.old is not None else frozenset()
        messages = nftbatch.encode(*delta, new.family, new.table, old)
        if messages is not None:
            return (NftElements(messages, text),)
        return (Exec(("nft", "-f", "-"), text),)
    if new is not None and not new.text:
        raise ValueError("firewall has no loadable text")
    table = new.text if new else None
    if split and table is not None:
        table = without_tenant_elements(table)  # the first part of a split load
    return (Exec(("nft", "-f", "-"), firewall_transaction(table)),)


# ------------------------------------------------------------------------------ config


def config_commands(change: WriteConfig, config_text: str | None) -> tuple[Command, ...]:
    path = str(PurePath(change.new.path))
    if change.new.digest is None:
        return (Exec(("rm", "-f", "--", path)),)
    if config_text is None:
        raise ValueError(f"no content to write to {path}")
    return (WriteFile(path, config_text, 0o600),)
