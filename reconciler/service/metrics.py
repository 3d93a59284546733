"""Prometheus metrics of the service, on its own registry.

Revision and per-tunnel series come from custom collectors that read the current snapshot at
scrape time, so a removed tunnel or a superseded commit disappears instead of lingering as a
stale label set. Per-tunnel names follow prometheus_wireguard_exporter. deploy/prometheus/ holds
alerting rules and deploy/grafana/ a dashboard over exactly these names (a test checks both).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

RESULTS = ("applied", "repaired", "noop", "refused", "failed", "suspended", "busy")
PHASES = ("Starting", "Reconciling", "Ready", "Degraded", "Stalled", "Suspended")
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class TunnelStats:
    interface: str
    org: str
    tunnel: str
    public_key: str
    latest_handshake: int  # unix seconds, 0 = never
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class Revisions:
    applied: str | None = None
    applied_at: float = 0.0
    attempted: str | None = None
    attempted_result: str = ""
    remote_head: str | None = None  # the fetched head of the branch; None before a fetch


class _RevisionCollector(Collector):
    def __init__(self) -> None:
        self.current = Revisions()

    def collect(self) -> Iterable[Metric]:
        rev = self.current
        applied = GaugeMetricFamily("tunnelctl_last_applied_revision_info",
                                    "Commit the host enforces (value 1)", labels=["commit"])
        if rev.applied:
            applied.add_metric([rev.applied], 1)
        yield applied
        attempted = GaugeMetricFamily("tunnelctl_last_attempted_revision_info",
                                      "Last commit evaluated and its result (value 1)",
                                      labels=["commit", "result"])
        if rev.attempted:
            attempted.add_metric([rev.attempted, rev.attempted_result], 1)
        yield attempted
        yield GaugeMetricFamily("tunnelctl_last_applied_timestamp_seconds",
                                "When the applied commit was applied", value=rev.applied_at)
        head = GaugeMetricFamily("tunnelctl_remote_head_info",
                                 "Head of the config branch as last fetched (value 1)",
                                 labels=["commit"])
        if rev.remote_head:
            head.add_metric([rev.remote_head], 1)
        yield head
        # One number an alert can hold for a while: "the host does not enforce the head".
        behind = rev.remote_head is not None and rev.remote_head != rev.applied
        yield GaugeMetricFamily("tunnelctl_applied_behind_remote",
                                "1 while the fetched head is not the applied commit",
                                value=1 if behind else 0)


class _TunnelCollector(Collector):
    def __init__(self, provider: Callable[[], Sequence[TunnelStats]]) -> None:
        self.provider = provider

    def collect(self) -> Iterable[Metric]:
        labels = ["interface", "public_key", "org", "tunnel"]
        handshake = GaugeMetricFamily("wireguard_latest_handshake_seconds",
                                      "UNIX time of the peer's latest handshake (0 = never)",
                                      labels=labels)
        sent = CounterMetricFamily("wireguard_sent_bytes", "Bytes sent to the peer", labels=labels)
        received = CounterMetricFamily("wireguard_received_bytes", "Bytes received from the peer",
                                       labels=labels)
        try:
            stats = self.provider()
        except Exception:  # noqa: BLE001 - a scrape must never take the service down
            stats = ()
        for s in stats:
            values = [s.interface, s.public_key, s.org, s.tunnel]
            handshake.add_metric(values, s.latest_handshake)
            sent.add_metric(values, s.tx_bytes)
            received.add_metric(values, s.rx_bytes)
        yield handshake
        yield sent
        yield received


class ServiceMetrics:
    def __init__(self, tunnel_stats: Callable[[], Sequence[TunnelStats]] = lambda: ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.reconcile_total = Counter("tunnelctl_reconcile", "Reconcile cycles by result",
                                       ["result"], registry=r)
        self.duration = Histogram("tunnelctl_reconcile_duration_seconds",
                                  "Duration of reconcile cycles by result", ["result"],
                                  buckets=DURATION_BUCKETS, registry=r)
        for result in RESULTS:
            self.reconcile_total.labels(result)
        self.drift_repairs = Counter("tunnelctl_drift_repairs", "Cycles that repaired drift made "
                                     "outside git (the enforced commit did not change)", registry=r)
        self.fetch_errors = Counter("tunnelctl_fetch_errors", "Failed fetches of the config remote",
                                    registry=r)
        self.audit_pending = Gauge("tunnelctl_audit_pending_entries",
                                   "Audit entries committed locally but not yet pushed", registry=r)
        self.suspended = Gauge("tunnelctl_suspended", "1 while applying is suspended", registry=r)
        self.ready = Gauge("tunnelctl_ready", "1 when the remote head is applied in full",
                           registry=r)
        self.tunnels = Gauge("tunnelctl_tunnels", "Tunnels of this gateway in the enforced state "
                             "by status", ["status"], registry=r)
        # Every phase always present (0 or 1), so "Degraded for 15m" needs no absent() guard.
        self.phase = Gauge("tunnelctl_phase", "1 for the service's current status word",
                           ["phase"], registry=r)
        self.set_phase("Starting")
        self._revisions = _RevisionCollector()
        r.register(self._revisions)
        r.register(_TunnelCollector(tunnel_stats))
        self._lock = threading.Lock()

    def observe_cycle(self, result: str, seconds: float) -> None:
        self.reconcile_total.labels(result).inc()
        self.duration.labels(result).observe(seconds)

    def set_revisions(self, revisions: Revisions) -> None:
        self._revisions.current = revisions  # one reference swap: scrapes see old or new

    def set_phase(self, phase: str) -> None:
        for name in PHASES:
            self.phase.labels(name).set(1 if name == phase else 0)

    def set_tunnel_counts(self, counts: dict[str, int]) -> None:
        for status in ("active", "disabled", "revoked"):
            self.tunnels.labels(status).set(counts.get(status, 0))

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Start the HTTP exporter thread; returns the bound address (port 0 picks one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        bound = server.server_address
        return str(bound[0]), int(bound[1])
