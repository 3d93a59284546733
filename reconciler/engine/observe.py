"""Observe stage: read the live host through the runner and parse it into ObservedState.

Reads only: `ip -json addr show dev <if>`, `wg show <if> dump`, our routes of both families
(`ip -json route show table all dev <if> proto 252`), our nft table (`nft -j list table
inet tunnelctl`) and the interface config file's digest. Preshared keys are reduced to
digests at parse time. The rollback snapshot (which does need the keys) is read separately
by `read_snapshot`, into memory only.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from reconciler.engine.hoststate import (
    FIREWALL_FAMILY,
    FIREWALL_TABLE,
    ROUTE_PROTO,
    ConfigFile,
    Firewall,
    InterfaceConfig,
    ObservedState,
    Route,
    Secrets,
)
from reconciler.engine.nftgen import Generation
from reconciler.engine.parsers import (
    LinkInfo,
    WgDump,
    nft_table_absent,
    parse_ip_addr,
    parse_nft_table,
    parse_routes,
    parse_wg_dump,
    parse_wg_dump_secrets,
)
from reconciler.engine.plan import (
    Plan,
    RemovePeer,
    ReplaceFirewall,
    SetInterface,
    UpdatePeer,
)
from reconciler.engine.psk import psk_digest
from reconciler.engine.runner import CommandError, Result, Runner


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


def listing(key: tuple[int, str, str]) -> tuple[int, Firewall | None] | None:
    """(generation, table) of the last remembered listing for (netns cookie, family, table)."""
    return _listed.get(key)


def forget_listing(key: tuple[int, str, str]) -> None:
    """The next read of that table lists it again."""
    with _listed_lock:
        _listed.pop(key, None)


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
