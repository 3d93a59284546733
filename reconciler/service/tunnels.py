"""The read side of the enforced state, for metrics and status: tunnels per status, the
managed interface, and each enforced tunnel's live counters from `wg show dump`."""

from __future__ import annotations

from reconciler.engine.parsers import parse_wg_dump
from reconciler.engine.psk import psk_digest
from reconciler.engine.runner import Runner
from reconciler.repo.state import RepoState
from reconciler.service.metrics import TunnelStats


def count_by_status(enforced: RepoState | None, gateway: str | None) -> dict[str, int]:
    counts: dict[str, int] = {}
    if enforced is None or gateway is None:
        return counts
    for t in enforced.for_gateway(gateway):
        counts[t.status.value] = counts.get(t.status.value, 0) + 1
    return counts


def gateway_interface(enforced: RepoState | None, gateway: str | None) -> str | None:
    """The enforced gateway's interface (None: nothing enforced or an unknown gateway)."""
    if enforced is None or gateway is None or gateway not in enforced.gateways:
        return None
    return enforced.gateways[gateway].interface


def live_tunnel_stats(netns: str | None, interface: str | None,
                      enforced: RepoState | None) -> list[TunnelStats]:
    """Live counters of the enforced tunnels (for the metrics exporter)."""
    if interface is None or enforced is None:
        return []
    res = Runner(netns=netns).run(["wg", "show", interface, "dump"], check=False)
    if res.returncode != 0:
        return []
    status = parse_wg_dump(res.stdout, psk_digest).status
    out = []
    for t in enforced.tunnels:
        s = status.get(t.public_key)
        if s is not None:
            out.append(TunnelStats(interface, t.org, t.name, t.public_key, s.latest_handshake,
                                   s.rx_bytes, s.tx_bytes))
    return out
