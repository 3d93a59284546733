"""`tunnelctl status`: the service's state and every tunnel's live state, service running or not.

Reads only: state.json in the state directory, the applied commit's tree from the mirror (the
tunnels the host enforces) and `wg show <if> dump` on the live interface.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from reconciler.engine.cycle import EngineError, select_gateway
from reconciler.engine.hoststate import PeerStatus
from reconciler.engine.parsers import ParseError, parse_wg_dump
from reconciler.engine.psk import psk_digest
from reconciler.engine.runner import Runner
from reconciler.gitops.admission import load_commit
from reconciler.gitops.source import GitSource, SourceError
from reconciler.repo.model import Tunnel
from reconciler.repo.state import ParseCache
from reconciler.service.loop import running_pid
from reconciler.service.settings import Settings
from reconciler.service.state import Intent, ServiceState, StateStore

ONLINE_WITHIN = 180  # seconds: WireGuard's REJECT_AFTER_TIME; older handshakes mean offline


@dataclass(frozen=True)
class TunnelRow:
    org: str
    name: str
    subnet: str
    lans: tuple[str, ...]
    status: str  # active | disabled | revoked
    public_key: str
    present: bool  # the peer is configured on the live interface
    endpoint: str | None = None
    handshake_age: float | None = None  # seconds; None = never / no data
    rx_bytes: int = 0
    tx_bytes: int = 0
    online: bool = False


def tunnel_rows(tunnels: Iterable[Tunnel], live: Mapping[str, PeerStatus] | None,
                now: float) -> list[TunnelRow]:
    rows = []
    for t in sorted(tunnels, key=lambda t: (t.org, t.name)):
        s = (live or {}).get(t.public_key)
        age = (now - s.latest_handshake) if s is not None and s.latest_handshake else None
        rows.append(TunnelRow(
            org=t.org, name=t.name, subnet=str(t.subnet), lans=tuple(str(n) for n in t.lans),
            status=t.status.value, public_key=t.public_key, present=s is not None,
            endpoint=s.endpoint if s else None, handshake_age=age,
            rx_bytes=s.rx_bytes if s else 0, tx_bytes=s.tx_bytes if s else 0,
            online=age is not None and age < ONLINE_WITHIN))
    return rows


@dataclass(frozen=True)
class StatusReport:
    phase: str
    message: str
    running_pid: int | None
    suspended: Mapping[str, Any] | None
    state: ServiceState
    gateway: str | None
    interface: str | None
    tunnels: list[TunnelRow] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    intent: Intent | None = None  # an apply started and not yet audited (in progress or killed)

    def to_json(self) -> dict[str, Any]:
        st = self.state
        return {
            "phase": self.phase, "message": self.message, "running": self.running_pid is not None,
            "pid": self.running_pid, "suspended": dict(self.suspended) if self.suspended else None,
            "gateway": self.gateway, "interface": self.interface,
            "applied": st.applied.model_dump() if st.applied else None,
            "attempted": st.attempted.model_dump() if st.attempted else None,
            "remote_head": st.remote_head, "held_orgs": st.held_orgs,
            "held_reason": st.held_reason or None, "last_error": st.last_error,
            "fetch_error": st.fetch_error, "audit_pending": st.audit_pending,
            "audit_error": st.audit_error, "metrics_address": st.metrics_address,
            "updated_at": st.updated_at,
            "history": [h.model_dump() for h in st.history[-10:]],
            "intent": ({"commit": self.intent.commit, "at": self.intent.at,
                        "summary": self.intent.summary} if self.intent else None),
            "tunnels": [asdict(r) for r in self.tunnels], "errors": self.errors,
        }


def collect_status(settings: Settings, *, live: bool = True) -> StatusReport:
    store = StateStore(settings.state_dir)
    errors: list[str] = []
    try:
        state = store.load()
    except ValueError as exc:
        state, errors = ServiceState(), [str(exc)]
    try:
        intent = store.load_intent()
    except ValueError as exc:
        intent, errors = None, [*errors, str(exc)]
    pid = running_pid(settings)
    suspended = store.suspended()
    phase, message = state.phase, state.message
    if suspended is not None:
        phase, message = "Suspended", f"suspended: {suspended.get('reason') or 'by an operator'}"
    elif pid is None:
        message = f"service not running; last known: {phase}: {message}".rstrip(": ")
    gateway, interface, tunnels = _enforced_tunnels(settings, state, errors)
    peer_status: Mapping[str, PeerStatus] | None = None
    if live and interface is not None:
        peer_status = _live_status(settings, interface, errors)
    rows = tunnel_rows(tunnels, peer_status, time.time())
    return StatusReport(phase, message, pid, suspended, state, gateway, interface, rows, errors,
                        intent)


def _enforced_tunnels(settings: Settings, state: ServiceState,
                      errors: list[str]) -> tuple[str | None, str | None, list[Tunnel]]:
    gateway = settings.gateway or state.gateway
    if state.applied is None or not (settings.mirror_dir / "HEAD").exists():
        return gateway, settings.interface, []
    source = GitSource(settings.repo_url, settings.branch, settings.mirror_dir,
                       repo_path=settings.repo_path)
    try:
        repo = load_commit(source, state.applied.commit, state.held_orgs, ParseCache())
        gw = select_gateway(repo, gateway)
    except (SourceError, EngineError) as exc:
        errors.append(f"applied state unreadable: {exc}")
        return gateway, settings.interface, []
    finally:
        source.close()
    return gw.name, settings.interface or gw.interface, list(repo.for_gateway(gw.name))


def _live_status(settings: Settings, interface: str,
                 errors: list[str]) -> Mapping[str, PeerStatus] | None:
    res = Runner(netns=settings.netns).run(["wg", "show", interface, "dump"], check=False)
    if res.returncode != 0:
        errors.append(f"cannot read {interface}: {res.stderr.strip() or 'wg show failed'}")
        return None
    try:
        return parse_wg_dump(res.stdout, psk_digest).status
    except ParseError as exc:
        errors.append(f"cannot parse wg show {interface} dump: {exc}")
        return None


# -- rendering -------------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


PHASE_STYLE = {"Ready": "green", "Degraded": "yellow", "Stalled": "red", "Suspended": "magenta",
               "Reconciling": "cyan", "Starting": "cyan"}


def render_status(report: StatusReport, console: Console) -> None:
    st = report.state
    style = PHASE_STYLE.get(report.phase, "white")
    running = f"running (pid {report.running_pid})" if report.running_pid else "not running"
    console.print(f"[bold {style}]{report.phase}[/]  {report.message}")
    console.print(f"service: {running}   gateway: {report.gateway or '?'}   "
                  f"interface: {report.interface or '?'}")
    applied = f"{st.applied.commit[:12]} {st.applied.subject}" if st.applied else "none"
    console.print(f"applied: {applied}")
    if st.attempted and (not st.applied or st.attempted.commit != st.applied.commit):
        console.print(f"attempted: {(st.attempted.commit or '?')[:12]} {st.attempted.result}: "
                      f"{st.attempted.reason}")
    if report.intent is not None:
        console.print(f"apply not yet audited: {report.intent.commit[:12]} (an interrupted one "
                      "is finished by the next cycle)")
    if st.remote_head and (not st.applied or st.remote_head != st.applied.commit):
        console.print(f"remote head: {st.remote_head[:12]}")
    for label, value in (("held orgs", st.held_reason), ("last error", st.last_error),
                         ("fetch error", st.fetch_error), ("audit", st.audit_error)):
        if value:
            console.print(f"{label}: {value}", markup=False)
    if st.audit_pending:
        console.print(f"audit entries waiting to be pushed: {st.audit_pending}")
    for err in report.errors:
        console.print(f"[red]{err}[/]")
    table = Table(show_lines=False, header_style="bold")
    for col in ("org", "name", "subnet", "LANs", "endpoint", "handshake", "rx", "tx", "online",
                "status"):
        table.add_column(col, justify="right" if col in ("rx", "tx") else "left")
    for r in report.tunnels:
        online = "[green]yes[/]" if r.online else ("[red]no[/]" if r.status == "active" else "-")
        status = r.status if r.present or r.status != "active" else "active (peer missing)"
        table.add_row(r.org, r.name, r.subnet, ", ".join(r.lans) or "-", r.endpoint or "-",
                      _age(r.handshake_age), _bytes(r.rx_bytes), _bytes(r.tx_bytes), online,
                      status)
    console.print(table)
    count = sum(1 for r in report.tunnels if r.online)
    console.print(f"{len(report.tunnels)} tunnels, {count} online")
