"""Observe stage: read the live host through the runner and parse it into ObservedState.

Reads only: `ip -json addr show dev <if>`, `wg show <if> dump`, our routes of both families
(`ip -json route show table all dev <if> proto 252`), our nft table (`nft -j list table
inet tunnelctl`) and the interface config file's digest. Preshared keys are reduced to
digests at parse time. The rollback snapshot (which does need the keys) is read separately
by `read_snapshot`, into memory only.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
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
    InterfaceConfig,
    ObservedState,
    PeerStatus,
    Route,
    Secrets,
    note_derived,
)
from reconciler.engine.nftgen import Generation
from reconciler.engine.parsers import (
    LazyStatus,
    LinkInfo,
    WgDump,
    firewall_from_elements,
    nft_table_absent,
    parse_ip_addr,
    parse_nft_table,
    parse_routes,
    parse_wg_dump,
    parse_wg_dump_secrets,
)
from reconciler.engine.plan import (
    AddPeer,
    AddRoute,
    DeleteRoute,
    Plan,
    RemovePeer,
    ReplaceFirewall,
    SetInterface,
    UpdatePeer,
)
from reconciler.engine.psk import psk_digest
from reconciler.engine.runner import CommandError, Result, Runner
from reconciler.engine.uapi_dump import dump_lines


class InterfaceMissing(RuntimeError):
    """The managed interface does not exist: the engine configures it but never creates it."""

    def __init__(self, interface: str, netns: str | None) -> None:
        where = f"in netns {netns}" if netns else "on this host"
        super().__init__(f"interface {interface} not found {where}; run `tunnelctl bootstrap` "
                         "or `tunnelctl lab up`")
        self.interface = interface


class NotWireGuard(RuntimeError):
    pass


@dataclass(frozen=True)
class KnownTable:
    """Our table as known without listing it (None: known absent); see committed_table."""

    firewall: Firewall | None


def observe(runner: Runner, interface: str, *, config_path: Path | None = None,
            table: KnownTable | None = None,
            early_dump: Future[str] | None = None) -> ObservedState:
    """One consistent-enough read of everything the reconciler owns on this host.

    The four reads are independent processes, so they run at once, and each is parsed as soon
    as it is in while the slower ones still run (on 16k tenants the wg dump and the nft
    listing take ~0.1-0.3 s each, and so does parsing them). Results are examined in the
    order that decides the error: a missing interface first, then one wg cannot read.

    Verify after an apply may pass what it knows instead of two reads: `table`, the table
    committed_table proved (not listed then), and `early_dump`, the dump read_dump_early
    started once the last peer step was done (read again here if that read failed).
    """
    routes_argv = our_routes_argv(interface)
    reads: dict[str, float] = {}

    def timed(name: str, started: float) -> None:
        reads[name] = time.perf_counter() - started

    def read_link() -> LinkInfo | None:
        t0 = time.perf_counter()
        res = runner.run(["ip", "-json", "addr", "show", "dev", interface], check=False)
        out = parse_ip_addr(res.stdout) if res.returncode == 0 else None
        timed("ip addr", t0)
        return out

    def read_wg() -> Result | WgDump:
        t0 = time.perf_counter()
        res = _early_result(early_dump, interface)
        if res is None:
            res = runner.run(["wg", "show", interface, "dump"], check=False)
        timed("wg show dump", t0)
        t1 = time.perf_counter()
        out = res if res.returncode != 0 else parse_wg_dump(res.stdout, psk_digest)
        timed("wg dump parse", t1)
        return out

    def read_routes() -> frozenset[Route]:
        t0 = time.perf_counter()
        out = parse_routes(runner.run(routes_argv).stdout, dev=interface, proto=ROUTE_PROTO)
        timed("ip route", t0)
        return out

    def read_fw() -> Firewall | None:
        if table is not None:
            return table.firewall
        t0 = time.perf_counter()
        out = read_firewall(runner, reads=reads)
        timed("nft table", t0)
        return out

    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="observe") as pool:
        # Slowest first, so it starts first: the wg dump (wireguard-go lists every peer; there
        # is no per-peer read and no generation counter), then the nft table (usually only
        # its ruleset generation, see read_firewall).
        wg_future = pool.submit(read_wg)
        fw_future = pool.submit(read_fw)
        routes_future = pool.submit(read_routes)
        link = read_link()
        if link is None:
            raise InterfaceMissing(interface, runner.netns)
        config = None
        if config_path is not None:  # while the others still run
            t0 = time.perf_counter()
            config = ConfigFile(str(config_path), read_config_digest(config_path))
            timed("config digest", t0)
        dump = wg_future.result()
        if isinstance(dump, Result):
            raise NotWireGuard(f"{interface} exists but `wg show` cannot read it: "
                               f"{dump.stderr.strip()}")
        routes = routes_future.result()
        firewall = fw_future.result()
    iface = InterfaceConfig(
        name=interface,
        listen_port=dump.interface.listen_port,
        public_key=dump.interface.public_key,
        address=",".join(link.addresses) or None,
        mtu=link.mtu,
        up=link.up,
    )
    global last_reads
    last_reads = reads
    return ObservedState(iface, dump.peers, routes, firewall, config, peer_status=dump.status)


def _early_result(early_dump: Future[str] | None, interface: str) -> Result | None:
    """The early dump as a Result, None when there is none or it failed (then read again:
    the error a fresh read gives is the one to report)."""
    if early_dump is None:
        return None
    try:
        text = early_dump.result()
    except Exception:  # noqa: BLE001 - read again below
        return None
    return Result(("wg", "show", interface, "dump"), 0, text, "")


def our_routes_argv(interface: str) -> list[str]:
    """Our routes, IPv4 and IPv6 in one read: with `table all` ip filters on no table, and
    then it lists every family (without a table or `-4`/`-6` it would list IPv4 only)."""
    return ["ip", "-json", "route", "show", "table", "all", "dev", interface,
            "proto", str(ROUTE_PROTO)]


# Seconds each read of the last observe() took (command and parse; they overlap in time):
# what bounds a no-op cycle, reported by the benchmark. Diagnostics only.
last_reads: dict[str, float] = {}


def nft_list_argv(family: str = FIREWALL_FAMILY, table: str = FIREWALL_TABLE) -> list[str]:
    return ["nft", "-j", "list", "table", family, table]


def firewall_from_listing(res: Result, family: str = FIREWALL_FAMILY,
                          table: str = FIREWALL_TABLE) -> Firewall | None:
    if res.returncode != 0:
        if nft_table_absent(res.stderr):
            return None  # the table does not exist (yet, or deleted by hand)
        raise CommandError(res.argv, res.returncode, res.stderr)
    return parse_nft_table(res.stdout, family, table)


def read_firewall(runner: Runner, family: str = FIREWALL_FAMILY,
                  table: str = FIREWALL_TABLE, *,
                  reads: dict[str, float] | None = None) -> Firewall | None:
    """Our table, listed and parsed, unless the ruleset generation says it is exactly the
    table listed last time (reconciler.engine.nftgen): then that one, without running nft.
    A listing is remembered only when the generation was the same before and after it."""
    t0 = time.perf_counter()
    before = generation(runner)
    if reads is not None:
        reads["nft generation"] = time.perf_counter() - t0
    key = (before[0], family, table) if before is not None else None
    seen = _listed.get(key) if key is not None else None
    if seen is not None and before is not None and seen[0] == before[1]:
        return seen[1]
    t0 = time.perf_counter()
    fw = firewall_from_listing(runner.run(nft_list_argv(family, table), check=False),
                               family, table)
    if reads is not None:
        reads["nft -j list + parse"] = time.perf_counter() - t0
    if key is not None and before is not None and generation(runner) == before:
        _remember_listing(key, before[1], fw)
    return fw


def generation(runner: Runner) -> Generation | None:
    """The ruleset generation of the runner's namespace (see Runner.nft_generation)."""
    return runner.nft_generation() if isinstance(runner, Runner) else None


# (netns cookie, family, table) -> (generation, the table as listed at that generation)
_listed: dict[tuple[int, str, str], tuple[int, Firewall | None]] = {}
_listed_lock = threading.Lock()


def _remember_listing(key: tuple[int, str, str], gen: int, fw: Firewall | None) -> None:
    with _listed_lock:
        _listed.pop(key, None)
        if len(_listed) >= 16:
            _listed.pop(next(iter(_listed)))
        _listed[key] = (gen, fw)


def read_config_digest(path: Path) -> str | None:
    try:
        return ConfigFile.digest_of(path.read_bytes())
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- snapshot


@dataclass(frozen=True)
class Snapshot:
    """What rollback restores: the observed state plus what a digest cannot give back.

    Held in memory only and never logged (`secrets` hides its repr; `config_content` holds the
    old file, which contains keys, so repr is disabled for it too).
    """

    state: ObservedState
    secrets: Secrets
    firewall_text: str | None  # loadable `nft list table` output; None = table was absent
    config_content: bytes | None

    def __repr__(self) -> str:
        return f"Snapshot(peers={len(self.state.peers)}, routes={len(self.state.routes)}, " \
               f"firewall={'yes' if self.firewall_text else 'no'})"


def read_snapshot(runner: Runner, interface: str, state: ObservedState,
                  config_path: Path | None, plan: Plan | None = None) -> Snapshot:
    """Keys from the dump (private key, PSKs), the table as text, the config file bytes.

    With the plan about to be applied, only what undoing that plan needs is read: keys only
    when a peer is removed, a peer's PSK or the interface key changes (other updates are
    undone field by field and never resend a key), and the table's text only when the plan
    loads the table whole. On 16k tenants each full read costs ~0.1-0.3 s, so a one-tenant
    change reads neither.
    """
    priv: str | None = None
    psks: dict[str, str] = {}
    if plan is None or _undo_needs_keys(plan):
        priv, psks = parse_wg_dump_secrets(runner.run(["wg", "show", interface, "dump"]).stdout)
    fw_text = None
    # Undoing an element-only change needs no text: it is the inverse element transaction.
    if state.firewall is not None and (plan is None or any(
            c.element_delta() is None for c in plan.of(ReplaceFirewall))):
        fw_text = runner.run(["nft", "list", "table", FIREWALL_FAMILY, FIREWALL_TABLE]).stdout
    content = None
    if config_path is not None:
        try:
            content = config_path.read_bytes()
        except FileNotFoundError:
            content = None
    return Snapshot(state, Secrets(priv, psks), fw_text, content)


def _undo_needs_keys(plan: Plan) -> bool:
    """Whether undoing `plan` must send a key the host holds now: a removed peer's or a
    replaced PSK, or a replaced private key. A peer without a PSK, or an interface without a
    key (a cold converge: the dump of an empty interface is not read), has none to keep."""
    for c in plan.changes:
        if isinstance(c, RemovePeer) and c.peer.psk_digest is not None:
            return True
        if isinstance(c, UpdatePeer) and c.old.psk_digest is not None \
                and c.old.psk_digest != c.new.psk_digest:
            return True
        if isinstance(c, SetInterface) and c.old is not None and c.old.public_key is not None \
                and c.old.public_key != c.new.public_key:
            return True
    return False


# ------------------------------------------------------------------- verify one change


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
    future: Future[RoutesRead] = Future()

    def routes(dst: str | None) -> frozenset[Route]:
        argv = our_routes_argv(interface) + (["exact", dst] if dst is not None else [])
        return parse_routes(runner.run(argv).stdout, dev=interface, proto=ROUTE_PROTO)

    def read() -> None:
        try:
            if len(dsts) > EXACT_ROUTE_READS:
                future.set_result(RoutesRead(None, routes(None)))
                return
            with ThreadPoolExecutor(len(dsts), thread_name_prefix="verify-route") as pool:
                found = frozenset[Route]().union(*pool.map(routes, dsts))
            future.set_result(RoutesRead(frozenset(dsts), found))
        except BaseException as exc:  # noqa: BLE001 - raised where the result is awaited
            future.set_exception(exc)

    threading.Thread(target=read, name="verify-routes", daemon=True).start()
    return future


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
    future: Future[str] = Future()
    wanted = sorted(keys) if keys is not None else None

    def dump() -> str:
        if wanted is not None and runner.has_uapi(interface):
            return dump_lines(runner.uapi_get(interface), wanted)
        return runner.run(["wg", "show", interface, "dump"]).stdout

    def read() -> None:
        try:
            future.set_result(dump())
        except BaseException as exc:  # noqa: BLE001 - raised where the result is awaited
            future.set_exception(exc)

    threading.Thread(target=read, name="verify-dump", daemon=True).start()
    return future


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
                    change: ReplaceFirewall) -> KnownTable | None:
    """The table now, known exactly without reading it, or None (then it is read back).

    `before` was listed at generation g (or found absent). If the generation now is g + 1,
    exactly one transaction committed since: the one apply just ran (its `nft -f` or element
    batch succeeded, or verify would not run), which turned `change.old` (== before) into
    `change.new`, the whole table replaced or elements changed, atomically either way.
    Anything else (another writer, a write that did not commit, a listing not remembered)
    reads the table back instead. Either way the next full observe lists the table."""
    now = generation(runner)
    if now is None:
        return None
    named = change.new if change.new is not None else change.old
    if named is None:
        return None
    key = (now[0], named.family, named.table)
    seen = _listed.get(key)
    if seen is None or now[1] != seen[0] + 1:
        return None
    if not (seen[1] is before or seen[1] == before) or change.old != before:
        return None
    # Known by reasoning, not read: the next full observe lists the table again (the service
    # runs one in the same cycle), so a table nft stored other than we reason is still seen.
    with _listed_lock:
        _listed.pop(key, None)
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
