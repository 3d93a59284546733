"""The cross-file rules for one tunnel against its gateway: subnet and LANs against the pool, the
allocation size, the gateway's own block, reserved and routed ranges and the public endpoint,
and the services against the catalog. Split out of `reconciler.repo.crossfile`, which runs them.

IPv4 and IPv6 run the same rules: a `_Family` says which keys and words a family uses, and
`FamilyFacts` holds one gateway's values for one family, computed once per load. Results are
(location, message) pairs, the shape `crossfile.RuleMemo` keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, NamedTuple

from reconciler.repo.model import Gateway, Tunnel
from reconciler.repo.yamlio import Loc

Span = tuple[int, int]  # an address range as sweep integers, both ends included


class Rule(NamedTuple):
    """A broken rule: where in the tunnel file, and what is wrong."""

    loc: Loc
    message: str


def span4(net: IPv4Network) -> Span:
    lo = int(net.network_address)
    return lo, lo + (1 << (32 - net.prefixlen)) - 1


# IPv6 ranges as sweep integers: shifted past every IPv4 and IPv6 integer, so one sorted list
# holds both families and a v6 claim never overlaps a v4 one (even a mistyped non-ULA subnet6).
V6_OFFSET = 1 << 128


def span6(net: IPv6Network) -> Span:
    lo = int(net.network_address) + V6_OFFSET
    return lo, lo + (1 << (128 - net.prefixlen)) - 1


def _span(net: IPv4Network | IPv6Network) -> Span:
    return span4(net) if isinstance(net, IPv4Network) else span6(net)


def overlap(a: Span, b: Span) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def endpoint6(gw: Gateway) -> IPv6Address | None:
    """The endpoint host when it is a literal IPv6 address."""
    try:
        ip = ip_address(gw.endpoint_host)
    except ValueError:
        return None
    return ip if isinstance(ip, IPv6Address) else None


@dataclass(frozen=True)
class Family:
    """What differs between IPv4 and IPv6 in the rules: keys and the words of the messages."""

    suffix: str  # every gateway and tunnel key of the family ends in it: subnet6, pool6, ...
    pool_words: str  # how a subnet message names the pool: "the pool X" / "pool6 X"
    ip_words: str  # "" or "IPv6 ": "the IPv6 tunnel pool", "the gateway's IPv6 address block"
    endpoint: Callable[[Gateway], IPv4Address | IPv6Address | None]  # a literal endpoint
    # IPv4: a literal endpoint has rules of its own (subnet and LANs must not contain it);
    # IPv6: it is one more range a LAN must not overlap.
    endpoint_rules: bool

    def key(self, name: str) -> str:
        return name + self.suffix


IPV4 = Family("", "the pool", "", lambda gw: gw.endpoint_ip, endpoint_rules=True)
IPV6 = Family("6", "pool6", "IPv6 ", endpoint6, endpoint_rules=False)
FAMILIES = (IPV4, IPV6)


class FamilyFacts:
    """One gateway's values for one family, as the tunnel rules need them."""

    def __init__(self, family: Family, path: str, gw: Gateway) -> None:
        key = family.key
        self.family = family
        self.pool_net: IPv4Network | IPv6Network = getattr(gw, key("pool"))
        self.want: int = getattr(gw, key("allocation_prefix"))
        self.own_net: IPv4Network | IPv6Network = getattr(gw, key("gateway_subnet"))
        address = getattr(gw, key("address"))
        self.cloud_ip: IPv4Address | IPv6Address = address.ip
        self.subnet_key, self.lans_key = key("subnet"), key("lans")
        self.span: Callable[[Any], Span] = span4 if family is IPV4 else span6
        self.pool_text = f"{family.pool_words} {self.pool_net}"  # "the pool 10.20.0.0/16"
        self.pool, self.own = _span(self.pool_net), _span(self.own_net)
        self.infra = [(f"reserved infrastructure range {r} ({path})", _span(r))
                      for r in getattr(gw, key("reserved"))]
        self.infra += [(f"cloud service range {r} ({path})", _span(r))
                       for r in getattr(gw, key("routed_ranges"))]
        words = family.ip_words
        self.lan_forbidden = [(f"the {words}tunnel pool {self.pool_net}", self.pool),
                              (f"the gateway's {words}address block {address.network}",
                               _span(address.network)), *self.infra]
        ip = family.endpoint(gw)
        self.endpoint_ip = ip if family.endpoint_rules else None
        self.endpoint = int(ip) if ip is not None and family.endpoint_rules else None
        if ip is not None and not family.endpoint_rules:  # no customer LAN may capture it
            self.lan_forbidden.append((f"the gateway's public endpoint {ip}",
                                       _span(IPv6Network(ip))))


class GatewayFacts:
    """Per-gateway values the tunnel rules need, computed once per load, not per tunnel."""

    def __init__(self, path: str, gw: Gateway) -> None:
        self.path, self.gw = path, gw
        self.v4 = FamilyFacts(IPV4, path, gw)
        # None on a v4-only gateway, where any subnet6/lans6 is refused outright
        dual = gw.pool6 is not None and gw.address6 is not None
        self.v6 = FamilyFacts(IPV6, path, gw) if dual else None


def gateway_rules(t: Tunnel, facts: GatewayFacts) -> list[Rule]:
    """Rules for one tunnel that need its gateway (pool, reserved ranges, service catalog)."""
    gw = facts.gw
    out = _family_rules(t.subnet, t.lans, facts.v4, gw.name)
    if t.subnet6 is not None or t.lans6:
        if facts.v6 is None:
            out.extend(_no_ipv6(t, facts))
        else:
            out.extend(_family_rules(t.subnet6, t.lans6, facts.v6, gw.name))
    if t.services:
        for i, svc in enumerate(t.services):
            if svc not in gw.services:
                out.append(Rule(("services", i), f"service {svc!r} is not in the catalog "
                                f"of gateway {gw.name} ({', '.join(sorted(gw.services))})"))
    return out


def _family_rules(subnet: IPv4Network | IPv6Network | None,
                  lans: tuple[IPv4Network, ...] | tuple[IPv6Network, ...],
                  f: FamilyFacts, gateway: str) -> list[Rule]:
    """One family's subnet and LANs against the gateway's pool, blocks and endpoint."""
    out: list[Rule] = []
    endpoint, pool = f.endpoint, f.pool_text
    if subnet is not None:
        key = f.subnet_key  # "subnet" or "subnet6"; the subnet's text only when a rule fails
        where: Loc = (key,)
        sub = f.span(subnet)
        if subnet.prefixlen != f.want:
            out.append(Rule(where, f"{key} {subnet} is a /{subnet.prefixlen}; every tunnel gets "
                            f"a /{f.want} from {pool} ('tunnelctl new' picks a free one)"))
        elif not (f.pool[0] <= sub[0] and sub[1] <= f.pool[1]):
            out.append(Rule(where, f"{key} {subnet} is outside {pool} of gateway {gateway}; "
                            f"pick a free /{f.want} inside it"))
        if overlap(sub, f.own):
            out.append(Rule(where, f"{key} {subnet} overlaps the gateway's own block "
                            f"{f.own_net} (it holds the cloud address {f.cloud_ip}); pick "
                            f"another /{f.want}"))
        for label, span in f.infra:
            if overlap(sub, span):
                out.append(Rule(where, f"{key} {subnet} overlaps the {label}; tenants may "
                                "never use infrastructure addresses"))
        if endpoint is not None and sub[0] <= endpoint <= sub[1]:
            out.append(Rule(where, f"{key} {subnet} contains the gateway's public endpoint "
                            f"{f.endpoint_ip}; that would loop the tunnel into itself"))
    for i, lan in enumerate(lans):
        span = f.span(lan)
        for label, other in f.lan_forbidden:
            if overlap(span, other):
                out.append(Rule((f.lans_key, i), f"LAN {lan} overlaps {label}; a customer "
                                "LAN must not cover cloud or tunnel addresses"))
                break
        if endpoint is not None and span[0] <= endpoint <= span[1]:
            out.append(Rule((f.lans_key, i), f"LAN {lan} contains the gateway's public "
                            f"endpoint {f.endpoint_ip}; the customer's router would send the "
                            "tunnel into itself"))
    return out


def _no_ipv6(t: Tunnel, facts: GatewayFacts) -> list[Rule]:
    """subnet6/lans6 on a gateway without IPv6 in its tunnels."""
    out: list[Rule] = []
    for key, what in (("subnet6", f"subnet6 {t.subnet6}"), ("lans6", "lans6")):
        if getattr(t, key):
            out.append(Rule((key,), f"{what} needs IPv6 in the tunnels, but gateway "
                            f"{facts.gw.name} has none ({facts.path} declares no "
                            f"address6/pool6); add them there, or remove {key}"))
    return out
