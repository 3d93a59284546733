"""Verify one change: the host read back only where a plan changed it, for the service's
quick path (engine.verified_cache decides when it applies). The changed peers from one read
started as soon as the last peer step is done (wireguard-go's control socket where there is
one), the changed routes with one `ip route show exact` each, started after the route step,
the tenant map elements by the ruleset generation (or one `nft get element` each), and the
config file's digest; the rest is taken from the full observation it follows.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from reconciler.engine.hoststate import (
    FIREWALL_FAMILY,
    FIREWALL_TABLE,
    ROUTE_PROTO,
    TENANT_MAPS,
    ConfigFile,
    Firewall,
    ObservedState,
    PeerStatus,
    Route,
    note_derived,
)
from reconciler.engine.interpreter import started
from reconciler.engine.observe import (
    KnownTable,
    forget_listing,
    generation,
    listing,
    our_routes_argv,
    read_config_digest,
)
from reconciler.engine.parsers import (
    LazyStatus,
    WgDump,
    firewall_from_elements,
    parse_routes,
    parse_wg_dump,
)
from reconciler.engine.plan import (
    AddPeer,
    AddRoute,
    DeleteRoute,
    Plan,
    RemovePeer,
    ReplaceFirewall,
    UpdatePeer,
)
from reconciler.engine.psk import psk_digest
from reconciler.engine.runner import CommandError, Runner
from reconciler.engine.uapi_dump import dump_lines

EXACT_ROUTE_READS = 3  # one read per changed route up to this many, else the whole listing


@dataclass(frozen=True)
class RoutesRead:
    """Our routes to the destinations a plan changed, as read back (every table)."""

    dsts: frozenset[str] | None  # None: `found` is all of our routes (many changed)
    found: frozenset[Route]

    def over(self, before: frozenset[Route]) -> frozenset[Route]:
        if self.dsts is None:
            return self.found
        dsts = self.dsts
        return frozenset({r for r in before if r.dst not in dsts} | self.found)


def read_routes_early(runner: Runner, interface: str,
                      plan: Plan) -> Future[RoutesRead] | None:
    """The routes of the destinations `plan` changes, read in a thread started now (the
    engine starts it once the last route step is done, beside the config step): one
    `ip route show table all exact <dst>` each, at once, up to EXACT_ROUTE_READS; more are
    one listing of all of ours (5k routes at 16k tenants, ~40-70 ms with its parse).
    None when the plan changes no route."""
    dsts = sorted({c.route.dst for c in plan.changes if isinstance(c, (AddRoute, DeleteRoute))})
    if not dsts:
        return None

    def routes(dst: str | None) -> frozenset[Route]:
        argv = our_routes_argv(interface) + (["exact", dst] if dst is not None else [])
        return parse_routes(runner.run(argv).stdout, dev=interface, proto=ROUTE_PROTO)

    def read() -> RoutesRead:
        if len(dsts) > EXACT_ROUTE_READS:
            return RoutesRead(None, routes(None))
        with ThreadPoolExecutor(len(dsts), thread_name_prefix="verify-route") as pool:
            return RoutesRead(frozenset(dsts), frozenset[Route]().union(*pool.map(routes, dsts)))

    return started(read, "verify-routes")


def changed_peers(plan: Plan) -> set[str]:
    """The public keys of the peers `plan` adds, removes or updates."""
    return {c.peer.public_key if isinstance(c, (AddPeer, RemovePeer)) else c.new.public_key
            for c in plan.changes if isinstance(c, (AddPeer, RemovePeer, UpdatePeer))}


def read_dump_early(runner: Runner, interface: str,
                    keys: Iterable[str] | None = None) -> Future[str]:
    """`wg show <if> dump` started now in its own thread, for observe_changes: the engine
    starts it once the plan's last peer step is done, beside the route and config steps
    that follow (no later step touches a peer).

    With `keys` (a quick read-back) and wireguard-go's control socket, only those peers'
    lines (and the interface's), from one `get=1` on the socket: about half the time of
    `wg show dump` at 16k peers (engine/uapi_dump.py)."""
    wanted = sorted(keys) if keys is not None else None

    def dump() -> str:
        if wanted is not None and runner.has_uapi(interface):
            return dump_lines(runner.uapi_get(interface), wanted)
        return runner.run(["wg", "show", interface, "dump"]).stdout

    return started(dump, "verify-dump")


def observe_changes(runner: Runner, interface: str, plan: Plan, before: ObservedState,
                    config_path: Path | None,
                    early_dump: Future[str] | None = None,
                    early_routes: Future[RoutesRead] | None = None) -> ObservedState:
    """`before` with everything `plan` touched read back from the host: the changed peers
    (from one dump, only their lines parsed), our routes to each changed destination in
    every table (or all of ours when more than EXACT_ROUTE_READS changed), each
    changed element of the tenant map (`nft get element`, one small read per key instead of
    listing 16k elements), and the config file's digest. What the plan did not touch is
    taken from `before`; the engine uses this only right after a full observe verified it.

    nft 1.0.6 reports an interval element by its start address: a LAN's prefix length is
    not read back here (the next full cycle lists the whole table).
    """
    keys = changed_peers(plan)
    fw_change = plan.of(ReplaceFirewall)[-1] if plan.of(ReplaceFirewall) else None
    committed = (committed_table(runner, before.firewall, fw_change)
                 if fw_change is not None and fw_change.new is not None
                 and before.firewall is not None else None)
    map_keys = (_changed_map_keys(fw_change) if fw_change is not None and committed is None
                else set())

    def read_peers() -> WgDump:
        text = early_dump.result() if early_dump is not None else \
            runner.run(["wg", "show", interface, "dump"]).stdout
        # Each changed peer's line found by its key at a line start (a few searches of the
        # text instead of splitting 16k lines); the first line is the interface's.
        wanted = [text.partition("\n")[0]]
        for key in sorted(keys):
            at = text.find("\n" + key + "\t")
            if at >= 0:
                end = text.find("\n", at + 1)
                wanted.append(text[at + 1:end if end >= 0 else len(text)])
        return parse_wg_dump("\n".join(wanted), psk_digest, remember=False)

    routes_f = early_routes if early_routes is not None else \
        read_routes_early(runner, interface, plan)
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="verify") as pool:
        peers_f = pool.submit(read_peers) if keys else None
        elem_f = {mk: pool.submit(read_map_element, runner, mk[1], mk[0])
                  for mk in sorted(map_keys)}
        peers = dict(before.peers)
        status: Mapping[str, PeerStatus] = before.peer_status
        if peers_f is not None:
            dump = peers_f.result()
            if isinstance(status, LazyStatus) and isinstance(dump.status, LazyStatus):
                status = status.updated(dump.status, keys)
            else:
                status = dict(status)
                for key in keys:
                    if key in dump.status:
                        status[key] = dump.status[key]
                    else:
                        status.pop(key, None)
            for key in keys:
                if key in dump.peers:
                    peers[key] = dump.peers[key]
                else:
                    peers.pop(key, None)
        routes = routes_f.result().over(before.routes) if routes_f is not None else \
            before.routes
        found = {key: f.result() for key, f in elem_f.items()}
    note_derived(peers, before.peers, keys)  # plan then compares only these against before
    firewall = before.firewall
    if committed is not None:
        firewall = committed.firewall
    elif fw_change is not None:
        firewall = _patched_firewall(before.firewall, fw_change, found)
    config = None
    if config_path is not None:
        config = ConfigFile(str(config_path), read_config_digest(config_path))
    return ObservedState(before.interface, peers, routes, firewall, config, peer_status=status)


def committed_table(runner: Runner, before: Firewall | None,
                    change: ReplaceFirewall, commits: int = 1) -> KnownTable | None:
    """The table now, known exactly without reading it, or None (then it is read back).

    `before` was listed at generation g (or found absent). If the generation now is g + 1,
    exactly one transaction committed since: the one apply just ran (its `nft -f` or element
    batch succeeded, or verify would not run), which turned `change.old` (== before) into
    `change.new`, the whole table replaced or elements changed, atomically either way. A
    split load (commands.split_load) is `commits` = 2 transactions: the structure, then the
    elements (both succeeded, or verify would not run).
    Anything else (another writer, a write that did not commit, a listing not remembered)
    reads the table back instead. Either way the next full observe lists the table."""
    now = generation(runner)
    if now is None:
        return None
    named = change.new if change.new is not None else change.old
    if named is None:
        return None
    key = (now[0], named.family, named.table)
    seen = listing(key)
    if seen is None or now[1] != seen[0] + commits:
        return None
    if not (seen[1] is before or seen[1] == before) or change.old != before:
        return None
    # Known by reasoning, not read: the next full observe lists the table again (the service
    # runs one in the same cycle), so a table nft stored other than we reason is still seen.
    forget_listing(key)
    return KnownTable(change.new)


# One element as `nft get element` prints it: an IPv4 or (compressed) IPv6 address.
_GET_ELEMENT_RE = re.compile(r"elements = \{ ([0-9a-f.:]+)(?:/\d+)? : (\S+ \S+) \}")


def _changed_map_keys(change: ReplaceFirewall) -> set[tuple[str, str]]:
    delta = change.element_delta()
    assert delta is not None
    return {(str(e[1]), str(e[2])) for e in delta[0] | delta[1]}


def fast_verifiable(change: ReplaceFirewall, limit: int = 16) -> bool:
    """Whether observe_changes can read this firewall change back: elements of the tenant
    maps only (IPv4 and IPv6), at most `limit` keys (more are cheaper to read as one
    listing)."""
    delta = change.element_delta()
    if delta is None:
        return False
    items = delta[0] | delta[1]
    return all(e[1] in TENANT_MAPS for e in items) and \
        len({(e[1], e[2]) for e in items}) <= limit


def read_map_element(runner: Runner, key: str, map_name: str = TENANT_MAPS[1]) -> str | None:
    """The verdict the tenant map `map_name` holds for the element starting at `key`'s
    address, or None when there is none (`nft get element` of a single address). In the
    hash map of /32s this reads one element; in the interval map nft still fetches every
    interval first, which is why that map holds only LANs."""
    addr = key.split("/", 1)[0]
    res = runner.run(["nft", "get", "element", FIREWALL_FAMILY, FIREWALL_TABLE, map_name,
                      "{", addr, "}"], check=False)
    if res.returncode != 0:
        if "No such file or directory" in res.stderr:
            return None
        raise CommandError(res.argv, res.returncode, res.stderr)
    m = _GET_ELEMENT_RE.search(res.stdout)
    if m is None:
        raise ValueError(f"nft get element {addr}: unexpected output {res.stdout[:200]!r}")
    found = m.group(1)
    if found != addr and ":" in found:  # IPv6: nft's and Python's spelling may differ
        return m.group(2) if ipaddress.ip_address(found) == ipaddress.ip_address(addr) else None
    return m.group(2) if found == addr else None


def _patched_firewall(before: Firewall | None, change: ReplaceFirewall,
                      found: dict[tuple[str, str], str | None]) -> Firewall | None:
    assert before is not None and change.new is not None
    keys = set(found)
    kept = {e for e in before.elements
            if not (e[0] == "elem" and (e[1], e[2]) in keys)}
    kept.update(("elem", name, key, verdict) for (name, key), verdict in found.items()
                if verdict is not None)
    if kept == change.new.elements:  # read back as planned: same table, same fingerprint
        return Firewall(change.new.family, change.new.table, change.new.fingerprint,
                        change.new.elements)
    return firewall_from_elements(kept, family=before.family, table=before.table)
