"""Dropping the connection-tracking entries of tenants that lost access.

The table accepts `established` only for replies, so a tenant's own packets are checked on
every packet; but the other side of a flow the tenant opened (RTP from the cloud or a routed
range back to the tenant) rides on the conntrack entry. When a tenant's services shrink, or
its tunnel is disabled, revoked or removed, the entries whose original source or destination
lies in its prefixes are deleted (`conntrack -D`, Debian package `conntrack`), so nothing of
the old flow survives the change. IPv4 and IPv6 alike: a dual-stack tenant's /128 and IPv6
LANs are flushed with `-f ipv6`.
"""

from __future__ import annotations

import bisect
import ipaddress
import logging
from collections.abc import Callable, Iterable

from reconciler.engine.hoststate import TENANT_MAPS
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


def _tenant_element(e: tuple[str | int, ...]) -> bool:
    """An element of a tenant map (source prefix -> `jump svc_...`), whichever map holds it."""
    return e[0] == "elem" and str(e[3]).startswith("jump ")


def shrunk_sources(plan: Plan) -> list[str]:
    """Tenant prefixes whose access the plan narrows: a tenant-map element removed, or moved
    to a chain whose services are not a superset of the old ones, and every AllowedIP of a
    removed peer. Collapsed, so a removal of many adjacent tenants is a few prefixes."""
    nets: set[str] = set()
    for change in plan.of(ReplaceFirewall):
        old = change.old.elements if change.old is not None else frozenset()
        new = change.new.elements if change.new is not None else frozenset()
        # An element change's delta is known (plan computed it): a removed key that is still
        # mapped is among the added elements, so only those are looked through.
        delta = change.element_delta()
        gone, kept = (old - new, new) if delta is None else delta
        if not gone:
            continue  # a cold converge: 21.8k new elements and nothing to look up
        now = {str(e[2]): str(e[3]) for e in kept if e[0] == "elem" and e[1] in TENANT_MAPS}
        for e in gone:
            if e[0] != "elem" or e[1] not in TENANT_MAPS:
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
    """Each family collapsed on its own (collapse_addresses takes one): IPv4 first."""
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for p in prefixes:
        try:
            net = ipaddress.ip_network(p, strict=False)
        except ValueError:
            continue
        if isinstance(net, ipaddress.IPv4Network):
            v4.append(net)
        else:
            v6.append(net)
    return ([str(n) for n in ipaddress.collapse_addresses(v4)]
            + [str(n) for n in ipaddress.collapse_addresses(v6)])


def _family(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    return "ipv4" if net.version == 4 else "ipv6"


PER_PREFIX_LIMIT = 8  # more prefixes: list the table once and delete what matches


def flush_prefixes(runner: Runner, prefixes: Iterable[str]) -> list[str]:
    """Delete the entries whose original source or destination is in one of `prefixes`.
    Returns the failures (empty when all went; "0 entries deleted" is not a failure).

    A few prefixes: two `conntrack -D` filters each. Many (a removal of 2,000 tenants): one
    listing of the table, and a delete of each matching flow only, so the cost follows the
    number of live flows, not of tenants. Each family by itself (`-f ipv4`, `-f ipv6`)."""
    nets = [ipaddress.ip_network(p) for p in prefixes]
    if len(nets) <= PER_PREFIX_LIMIT:
        failed = []
        for net in nets:
            for side, mask in (("-s", "--mask-src"), ("-d", "--mask-dst")):
                err = _delete(runner, ["-f", _family(net), side, str(net.network_address), mask,
                                       str(net.netmask)])
                if err:
                    failed.append(f"{net} ({side}): {err}")
        return failed
    failed = []
    for family in ("ipv4", "ipv6"):
        some = [n for n in nets if _family(n) == family]
        if some:
            failed += _flush_listed(runner, some, family)
    return failed


def _flush_listed(runner: Runner, nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
                  family: str) -> list[str]:
    """One listing of the family's flows, a delete of each flow inside `nets`."""
    try:
        listing = runner.run(["conntrack", "-L", "-f", family], check=False, timeout=30)
    except OSError as exc:  # the tool is missing
        return [f"conntrack: {exc}"]
    if listing.returncode != 0:
        return [f"conntrack -L: {listing.stderr.strip()[:200]}"]
    ranges = sorted((int(n.network_address), int(n.broadcast_address)) for n in nets)
    starts = [r[0] for r in ranges]

    def inside(addr: str) -> bool:
        try:
            value = int(ipaddress.ip_address(addr))
        except ValueError:
            return False
        i = bisect.bisect_right(starts, value) - 1
        return i >= 0 and ranges[i][0] <= value <= ranges[i][1]

    failed, done = [], set()
    for flow in matching_flows(listing.stdout, inside, family):
        if flow in done:
            continue
        done.add(flow)
        err = _delete(runner, list(flow))
        if err:
            failed.append(f"{' '.join(flow)}: {err}")
    return failed


def matching_flows(listing: str, inside: Callable[[str], bool],
                   family: str = "ipv4") -> list[tuple[str, ...]]:
    """`conntrack -D` filters for each listed flow whose original source or destination is
    inside: protocol, addresses and (tcp/udp) ports of the original direction. `family`
    is the one the listing was made for (`-L -f ipv4` or `ipv6`)."""
    out = []
    for line in listing.splitlines():
        words = line.split()
        if not words:
            continue
        proto = words[0]
        fields: dict[str, str] = {}
        for w in words[1:]:
            key, eq, value = w.partition("=")
            if eq and key not in fields:  # the first of each: the original direction
                fields[key] = value
        src, dst = fields.get("src"), fields.get("dst")
        if src is None or dst is None or not (inside(src) or inside(dst)):
            continue
        flow = ["-f", family, "-p", proto, "-s", src, "-d", dst]
        if proto in ("tcp", "udp") and "sport" in fields and "dport" in fields:
            flow += ["--sport", fields["sport"], "--dport", fields["dport"]]
        out.append(tuple(flow))
    return out


def _delete(runner: Runner, filters: list[str]) -> str | None:
    try:
        res = runner.run(["conntrack", "-D", *filters], check=False, write=True, timeout=30)
    except OSError as exc:
        return str(exc)
    if res.returncode != 0 and _NOTHING_DELETED not in res.stderr:
        return res.stderr.strip()[:200]
    return None
