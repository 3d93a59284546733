"""Dropping the connection-tracking entries of tenants that lost access.

The table accepts `established` only for replies, so a tenant's own packets are checked on
every packet; but the other side of a flow the tenant opened (RTP from the cloud or a routed
range back to the tenant) rides on the conntrack entry. When a tenant's services shrink, or
its tunnel is disabled, revoked or removed, the entries whose original source or destination
lies in its prefixes are deleted (`conntrack -D`, Debian package `conntrack`), so nothing of
the old flow survives the change.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from reconciler.engine.hoststate import TENANT_MAP
from reconciler.engine.plan import Plan, RemovePeer, ReplaceFirewall
from reconciler.engine.runner import Runner

log = logging.getLogger("tunnelctl.engine")

_NOTHING_DELETED = "0 flow entries have been deleted"


def _services(verdict: str) -> frozenset[str] | None:
    """'jump svc_sip_rtp' -> {'sip', 'rtp'}; None when the chain name does not list them."""
    chain = verdict.removeprefix("jump ")
    if not chain.startswith("svc_") or chain.startswith("svc_h"):
        return None
    return frozenset(chain.removeprefix("svc_").split("_"))


def shrunk_sources(plan: Plan) -> list[str]:
    """Tenant prefixes whose access the plan narrows: a tenant-map element removed, or moved
    to a chain whose services are not a superset of the old ones, and every AllowedIP of a
    removed peer. Collapsed, so a removal of many adjacent tenants is a few prefixes."""
    nets: set[str] = set()
    for change in plan.of(ReplaceFirewall):
        old = change.old.elements if change.old is not None else frozenset()
        new = change.new.elements if change.new is not None else frozenset()
        now = {str(e[2]): str(e[3]) for e in new if e[0] == "elem" and e[1] == TENANT_MAP}
        for e in old - new:
            if e[0] != "elem" or e[1] != TENANT_MAP:
                continue
            key, was = str(e[2]), str(e[3])
            still = now.get(key)
            if still is not None:
                before, after = _services(was), _services(still)
                if before is not None and after is not None and before <= after:
                    continue  # services only grew
            nets.add(key)
    for removed in plan.of(RemovePeer):
        nets.update(removed.peer.allowed_ips)
    return collapse(nets)


def collapse(prefixes: Iterable[str]) -> list[str]:
    v4 = []
    for p in prefixes:
        try:
            net = ipaddress.ip_network(p, strict=False)
        except ValueError:
            continue
        if isinstance(net, ipaddress.IPv4Network):
            v4.append(net)
    return [str(n) for n in ipaddress.collapse_addresses(v4)]


def flush_prefixes(runner: Runner, prefixes: Iterable[str]) -> list[str]:
    """Delete the entries whose original source or destination is in one of `prefixes`.
    Returns the failures (empty when all went; "0 entries deleted" is not a failure)."""
    failed = []
    for prefix in prefixes:
        net = ipaddress.IPv4Network(prefix)
        for side, mask in (("-s", "--mask-src"), ("-d", "--mask-dst")):
            argv = ["conntrack", "-D", "-f", "ipv4", side, str(net.network_address),
                    mask, str(net.netmask)]
            try:
                res = runner.run(argv, check=False, write=True, timeout=30)
            except OSError as exc:  # the tool is missing
                return [f"conntrack: {exc}"]
            if res.returncode != 0 and _NOTHING_DELETED not in res.stderr:
                failed.append(f"{prefix} ({side}): {res.stderr.strip()[:200]}")
    return failed
