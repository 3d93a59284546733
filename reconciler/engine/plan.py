"""Plan stage: plan(desired, observed) -> Plan, a pure diff into typed changes.

Identity keys: interface by name, peer by public key, route by (table, dst, dev), firewall by
(family, table), config file by path. Values compare in the canonical form the render and
observe stages already produce, so an unchanged host plans nothing. Live counters
(endpoint, handshake, bytes) are not compared: a roaming customer is not drift. Only routes
carrying our protocol number are considered: everything else is foreign and never planned on.
This module is pure: no processes, no files, no imports of apply or runner.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from itertools import compress
from operator import and_, is_not
from typing import Any, TypeVar

from .hoststate import (
    ROUTE_PROTO,
    ConfigFile,
    Firewall,
    HostState,
    InterfaceConfig,
    Peer,
    Route,
    changed_keys,
    elements_delta,
    note_same_elements,
)

FieldChange = tuple[str, Any, Any]  # (field, old, new)
Element = tuple[str | int, ...]  # one item of Firewall.elements


def _field_changes(old: Any, new: Any, names: tuple[str, ...]) -> tuple[FieldChange, ...]:
    return tuple((n, getattr(old, n), getattr(new, n)) for n in names
                 if getattr(old, n) != getattr(new, n))


@dataclass(frozen=True)
class SetInterface:
    old: InterfaceConfig | None
    new: InterfaceConfig
    FIELDS = ("listen_port", "public_key", "address", "mtu", "up")

    def fields(self) -> tuple[FieldChange, ...]:
        if self.old is None:
            return tuple((n, None, getattr(self.new, n)) for n in self.FIELDS)
        return _field_changes(self.old, self.new, self.FIELDS)


@dataclass(frozen=True)
class AddPeer:
    peer: Peer
    owner: str | None = None


@dataclass(frozen=True)
class RemovePeer:
    peer: Peer


@dataclass(frozen=True)
class UpdatePeer:
    old: Peer
    new: Peer
    FIELDS = ("allowed_ips", "psk_digest", "keepalive")

    def fields(self) -> tuple[FieldChange, ...]:
        return _field_changes(self.old, self.new, self.FIELDS)


@dataclass(frozen=True)
class AddRoute:
    route: Route


@dataclass(frozen=True)
class DeleteRoute:
    route: Route


@dataclass(frozen=True)
class ReplaceFirewall:
    old: Firewall | None  # None: the table does not exist yet
    new: Firewall | None  # None: delete the table

    @property
    def old_fingerprint(self) -> str | None:
        return self.old.fingerprint if self.old else None

    @property
    def new_fingerprint(self) -> str | None:
        return self.new.fingerprint if self.new else None

    @functools.cached_property
    def _delta(self) -> tuple[tuple[frozenset[Element], frozenset[Element]] | None]:
        return (self._element_delta(),)

    def element_delta(self) -> tuple[frozenset[Element], frozenset[Element]] | None:
        """(elements to delete, elements to add) when the two tables differ in map or set
        elements only (same chains, rules and declarations); None when they differ in more,
        or one side is absent, and the table must be loaded whole. Computed once per change
        (two set differences of 21.8k elements at 16k tenants; plan, commands, snapshot and
        verify all ask)."""
        return self._delta[0]

    def _element_delta(self) -> tuple[frozenset[Element], frozenset[Element]] | None:
        old, new = self.old, self.new
        if old is None or new is None or (old.family, old.table) != (new.family, new.table):
            return None
        known = elements_delta(old.elements, new.elements)  # a patched render's few
        removed, added = known if known is not None else (old.elements - new.elements,
                                                          new.elements - old.elements)
        if any(e[0] != "elem" for e in removed) or any(e[0] != "elem" for e in added):
            return None
        return frozenset(removed), frozenset(added)


@dataclass(frozen=True)
class WriteConfig:
    old: ConfigFile | None
    new: ConfigFile


Change = (SetInterface | AddPeer | RemovePeer | UpdatePeer | AddRoute | DeleteRoute
          | ReplaceFirewall | WriteConfig)
C = TypeVar("C", SetInterface, AddPeer, RemovePeer, UpdatePeer, AddRoute, DeleteRoute,
            ReplaceFirewall, WriteConfig)


def _action(change: Change) -> str:
    """add | change | remove, the three words of the summary line."""
    if isinstance(change, (AddPeer, AddRoute)):
        return "add"
    if isinstance(change, (RemovePeer, DeleteRoute)):
        return "remove"
    if isinstance(change, ReplaceFirewall):
        return "add" if change.old is None else "remove" if change.new is None else "change"
    if isinstance(change, SetInterface):
        return "add" if change.old is None else "change"
    if isinstance(change, UpdatePeer):
        return "change"
    return "add" if change.old is None or change.old.digest is None else "change"


# The summary's kind of each change type (exact types: no change type has subclasses). A
# lookup, not an isinstance chain: a cold converge summarises 21.8k changes.
_KINDS: dict[type, str] = {
    AddPeer: "peers", RemovePeer: "peers", UpdatePeer: "peers", AddRoute: "routes",
    DeleteRoute: "routes", ReplaceFirewall: "firewall", SetInterface: "interface",
    WriteConfig: "config"}


def _kind(change: Change) -> str:
    return _KINDS[type(change)]


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.changes

    def __len__(self) -> int:
        return len(self.changes)

    def __iter__(self) -> Iterator[Change]:
        return iter(self.changes)

    def of(self, kind: type[C]) -> tuple[C, ...]:
        """The changes of one kind, in order. Grouped once per plan: a cycle asks a cold
        converge's 27k changes this a dozen times (apply, checkpoint, conntrack, read-back)."""
        groups = self.__dict__.get("_groups")
        if groups is None:
            grouped: dict[type, list[Change]] = {}
            for c in self.changes:
                grouped.setdefault(type(c), []).append(c)
            groups = {k: tuple(v) for k, v in grouped.items()}
            object.__setattr__(self, "_groups", groups)  # a memo of frozen data, not state
        found: tuple[C, ...] = groups.get(kind, ())
        return found

    def summary(self) -> dict[str, dict[str, int]]:
        """Counts per kind and action, e.g. {"peers": {"add": 2, ...}, ..., "total": {...}}."""
        out = {k: {"add": 0, "change": 0, "remove": 0}
               for k in ("interface", "firewall", "peers", "routes", "config", "total")}
        for c in self.changes:
            action = _action(c)
            out[_kind(c)][action] += 1
            out["total"][action] += 1
        return out

    def summary_line(self) -> str:
        t = self.summary()["total"]
        return f"Plan: {t['add']} to add, {t['change']} to change, {t['remove']} to remove."

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict. Secrets never appear: a PSK only as its digest, no private key."""
        return {"changes": [_change_json(c) for c in self.changes], "summary": self.summary()}

    def render_text(self) -> str:
        if self.empty:
            return "No changes. The host matches the desired state."
        return "\n".join([*(_change_text(c) for c in self.changes), "", self.summary_line()])


# ------------------------------------------------------------------------------ diffing


def plan(desired: HostState, observed: HostState) -> Plan:
    """The changes that turn `observed` into `desired`, in display order."""
    changes: list[Change] = []
    if desired.interface is not None and desired.interface != observed.interface:
        changes.append(SetInterface(observed.interface, desired.interface))
    if desired.firewall != observed.firewall:
        changes.append(ReplaceFirewall(observed.firewall, desired.firewall))
    elif desired.firewall is not None and observed.firewall is not None:
        note_same_elements(desired.firewall.elements, observed.firewall.elements)
    changes.extend(plan_peers(desired, observed))
    changes.extend(plan_routes(desired.routes, observed.routes))
    if desired.config is not None and desired.config != observed.config:
        changes.append(WriteConfig(observed.config, desired.config))
    return Plan(tuple(changes))


def plan_peers(desired: HostState, observed: HostState) -> list[Change]:
    # Only the differing peers are sorted (display order: owner, key), not all 16k. Pairs of
    # peer objects already found equal are recognised by identity, in C loops (map, compress):
    # a no-op plan of 16k peers costs a few dict lookups per peer, no dataclass comparison.
    global _equal_by_have, _equal_peer_maps
    have_peers, want_peers = observed.peers, desired.peers
    last = _equal_peer_maps
    if last is not None and last[0] is want_peers and last[1] is have_peers \
            and len(want_peers) == last[2] and len(have_peers) == last[2]:
        return []  # the very two peer maps found equal last time (render and parse reuse them)
    if last is not None:
        near = _plan_near(want_peers, have_peers, last)
        if near is not None:
            return near
    if not have_peers and len(want_peers) > 64:
        # No peer on the host (a cold converge): all are added. What the loop below would
        # give, without its per-peer Python steps (16k peers: ~75 -> ~25 ms).
        _equal_peer_maps = None
        _equal_by_have = {}
        _keep_alive.clear()
        ordered = sorted([(p.owner or "", k, p) for k, p in want_peers.items()])
        return [AddPeer(p, p.owner) for _, _, p in ordered]
    wants = list(want_peers.values())
    haves = list(map(have_peers.get, want_peers))
    known = _equal_by_have
    mapped = list(map(known.get, map(id, haves)))
    # Neither known equal nor the very same object (a cold converge's read-back parses to the
    # peers just applied: comparing 16k dataclasses field by field costs ~50 ms).
    suspects = list(compress(range(len(wants)), map(and_, map(is_not, mapped, wants),
                                                      map(is_not, haves, wants))))
    differ = []
    if suspects:
        equal_now = []
        for i in suspects:
            have, want = haves[i], wants[i]
            if have is not None and have == want:
                equal_now.append(i)
            else:
                differ.append(want.public_key)
        if len(suspects) > 64 or len(known) < len(wants) // 2 \
                or len(_keep_alive) > 2 * len(wants) + 1024:
            # Remember every equal pair (the first plan, or after a big change); the pairs
            # hold their objects, so an id cannot be reused while it is a key.
            bad = set(differ)
            _equal_by_have = {id(h): w for h, w in zip(haves, wants)
                              if h is not None and w.public_key not in bad}
            _keep_alive[:] = [h for h in haves if h is not None]
        elif equal_now:
            _equal_by_have = {**known, **{id(haves[i]): wants[i] for i in equal_now}}
            _keep_alive.extend(h for h in (haves[i] for i in equal_now) if h is not None)
    out: list[Change] = []
    extra = have_peers.keys() - want_peers.keys()
    _equal_peer_maps = None if differ or extra else (want_peers, have_peers, len(want_peers))
    for key in sorted(differ, key=lambda k: (want_peers[k].owner or "", k)):
        want = want_peers[key]
        have = have_peers.get(key)
        out.append(AddPeer(want, want.owner) if have is None else UpdatePeer(have, want))
    out.extend(RemovePeer(have_peers[k]) for k in sorted(extra))
    return out


def _plan_near(want_peers: Mapping[str, Peer], have_peers: Mapping[str, Peer],
               last: tuple[Mapping[str, Peer], Mapping[str, Peer], int]) -> list[Change] | None:
    """The peer changes when both maps derive by a few recorded keys (hoststate lineage) from
    the last pair found equal: only those keys can differ. None when that is not known."""
    global _equal_peer_maps
    kw = changed_keys(want_peers, last[0])
    kh = changed_keys(have_peers, last[1]) if kw is not None else None
    if kw is None or kh is None or len(last[0]) != last[2] or len(last[1]) != last[2]:
        return None
    keys = kw | kh
    differ = [k for k in keys if k in want_peers and want_peers[k] != have_peers.get(k)]
    extra = [k for k in keys if k in have_peers and k not in want_peers]
    if not differ and not extra:  # this pair is the new base (else the old one stays)
        _equal_peer_maps = (want_peers, have_peers, len(want_peers))
    out: list[Change] = []
    for key in sorted(differ, key=lambda k: (want_peers[k].owner or "", k)):
        want = want_peers[key]
        have = have_peers.get(key)
        out.append(AddPeer(want, want.owner) if have is None else UpdatePeer(have, want))
    out.extend(RemovePeer(have_peers[k]) for k in sorted(extra))
    return out


# Observed peer objects found equal to a desired one by an earlier plan: id(observed) ->
# desired. Render returns the same Peer objects for unchanged tunnels and parse_wg_dump the
# same ones for unchanged dump lines, so a no-op plan is identity checks. _keep_alive holds
# every observed object named here, so no id is reused while it is a key.
_equal_by_have: dict[int, Peer] = {}
_keep_alive: list[Peer] = []
_equal_routes: tuple[frozenset[Route], frozenset[Route]] | None = None
# The last (desired, observed) peer maps found equal, with their size. Neither side's maps are
# mutated after they are built (observe_changes copies), so the same two objects are equal.
_equal_peer_maps: tuple[Mapping[str, Peer], Mapping[str, Peer], int] | None = None


def plan_routes(desired: frozenset[Route], observed: frozenset[Route]) -> list[Change]:
    global _equal_routes
    last = _equal_routes
    if last is not None and last[0] is desired and last[1] is observed:
        return []  # the same two sets found equal last time (parse_routes reuses its result)
    if desired == observed:  # the common case, one set comparison
        _equal_routes = (desired, observed)
        return []
    ours = {r.key: r for r in observed if r.proto == ROUTE_PROTO}
    want = {r.key: r for r in desired}
    out: list[Change] = [AddRoute(r) for k, r in sorted((k, r) for k, r in want.items()
                                                        if k not in ours)]
    out.extend(DeleteRoute(r) for k, r in sorted((k, r) for k, r in ours.items()
                                                 if k not in want))
    return out


# -------------------------------------------------------------------------- presenting


def _ips(ips: tuple[str, ...]) -> str:
    return "[" + ", ".join(ips) + "]"


def _fmt(name: str, value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, tuple):
        return _ips(value)
    if name == "public_key":
        return f"{value[:8]}…"
    if name == "keepalive" and value == 0:
        return "off"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _peer_attrs(p: Peer) -> str:
    return (f"allowed_ips={_ips(p.allowed_ips)} psk={_fmt('psk', p.psk_digest)} "
            f"keepalive={_fmt('keepalive', p.keepalive)}")


def _change_text(c: Change) -> str:
    if isinstance(c, SetInterface):
        diff = ", ".join(f"{n}: {_fmt(n, o)} -> {_fmt(n, v)}" for n, o, v in c.fields())
        return f"{'+' if c.old is None else '~'} interface {c.new.name} {diff}"
    if isinstance(c, ReplaceFirewall):
        fw = c.new or c.old
        assert fw is not None
        name = f"firewall {fw.family} {fw.table}"
        if c.old is None:
            return f"+ {name} ({c.new.summary(short=True) if c.new else ''})"
        if c.new is None:
            return f"- {name} ({c.old.summary(short=True)})"
        oc, nc = c.old.counts(), c.new.counts()
        parts = [f"fp {c.old.fingerprint} -> {c.new.fingerprint}"]
        parts += [f"{k}s {oc.get(k, 0)} -> {nc.get(k, 0)}" for k in ("chain", "rule", "elem")
                  if oc.get(k, 0) != nc.get(k, 0)]
        return f"~ {name} (replaced atomically: {', '.join(parts)})"
    if isinstance(c, AddPeer):
        return f"+ peer {c.peer.label} {_peer_attrs(c.peer)}"
    if isinstance(c, RemovePeer):
        return f"- peer {c.peer.label} {_peer_attrs(c.peer)}"
    if isinstance(c, UpdatePeer):
        diff = ", ".join(f"{n}: {_fmt(n, o)} -> {_fmt(n, v)}" for n, o, v in c.fields())
        return f"~ peer {c.new.label} {diff}"
    if isinstance(c, AddRoute):
        return f"+ route {_route_text(c.route)}"
    if isinstance(c, DeleteRoute):
        return f"- route {_route_text(c.route)}"
    verb = "+" if c.old is None or c.old.digest is None else "~"
    return f"{verb} file {c.new.path} (mode 0600; contents {'new' if verb == '+' else 'differ'})"


def _route_text(r: Route) -> str:
    table = "" if r.table == "main" else f" table {r.table}"
    return f"{r.dst} dev {r.dev}{table} proto {r.proto}"


def _value_json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _peer_json(p: Peer) -> dict[str, Any]:
    return {"public_key": p.public_key, "owner": p.owner, "allowed_ips": list(p.allowed_ips),
            "psk_digest": p.psk_digest, "keepalive": p.keepalive}


def _change_json(c: Change) -> dict[str, Any]:
    base: dict[str, Any] = {"kind": _kind(c).rstrip("s"), "action": _action(c)}
    if isinstance(c, (SetInterface, UpdatePeer)):
        if isinstance(c, UpdatePeer):
            base.update(key=c.new.public_key, owner=c.new.owner)
        else:
            base.update(key=c.new.name)
        base["fields"] = {n: {"old": _value_json(o), "new": _value_json(v)}
                          for n, o, v in c.fields()}
    elif isinstance(c, (AddPeer, RemovePeer)):
        base.update(key=c.peer.public_key, **{k: v for k, v in _peer_json(c.peer).items()
                                              if k != "public_key"})
        if isinstance(c, AddPeer):
            base["owner"] = c.owner
    elif isinstance(c, (AddRoute, DeleteRoute)):
        base.update(key=list(c.route.key), **{f.name: getattr(c.route, f.name)
                                               for f in fields(c.route)})
    elif isinstance(c, ReplaceFirewall):
        fw = c.new or c.old
        assert fw is not None
        base.update(key=[fw.family, fw.table], old_fingerprint=c.old_fingerprint,
                    new_fingerprint=c.new_fingerprint,
                    old_counts=c.old.counts() if c.old else None,
                    new_counts=c.new.counts() if c.new else None)
    else:
        base.update(key=c.new.path, old_digest=c.old.digest if c.old else None,
                    new_digest=c.new.digest)
    return base
