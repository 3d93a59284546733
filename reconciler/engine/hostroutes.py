"""Host routes are not ours to take.

`ip route replace` would silently take over (same prefix) or shadow (a narrower prefix) a route
the host needs: Docker's bridge, a VPC subnet, the host's own LAN. So before any route is added,
the routes the reconciler does not own are read, and a tenant LAN that equals or overlaps one of
them is refused, naming the tenant file and the route. Routes on the tenant interface itself
(e.g. ones wg-quick added at boot for the peers' AllowedIPs) lead into the tunnel anyway and are
not conflicts; blackhole/unreachable/prohibit routes are not destinations and may be shadowed.

IPv6 LANs (lans6, and a customer /128 outside address6's prefix) are checked the same way
against `ip -6 route show table all`, read only when a plan adds an IPv6 route, so a v4-only
gateway runs exactly the read it ran before. Every unicast or local IPv6 route counts, from
any protocol and table; the kernel's own fe80::/64 (link-local) and ff00::/8 (a multicast
entry, skipped by type) could never overlap a LAN anyway: lans6 are unique local (fc00::/7).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network

from reconciler.engine.hoststate import ObservedState, v4_prefix
from reconciler.engine.parsers import parse_host_routes
from reconciler.engine.plan import AddRoute, Plan
from reconciler.engine.runner import Runner
from reconciler.repo.state import RepoState

HOST_ROUTES_ARGV = ["ip", "-4", "-json", "route", "show", "table", "all"]
HOST_ROUTES6_ARGV = ["ip", "-6", "-json", "route", "show", "table", "all"]


@dataclass(frozen=True)
class HostRoute:
    dst: IPv4Network | IPv6Network
    dev: str
    table: str
    proto: str

    def __str__(self) -> str:
        return f"{self.dst} dev {self.dev} (table {self.table}, proto {self.proto})"


@dataclass(frozen=True)
class RouteConflict:
    tenant_file: str
    lan: IPv4Network | IPv6Network
    route: HostRoute

    def __str__(self) -> str:
        how = "equals" if self.lan == self.route.dst else "overlaps"
        return (f"{self.tenant_file}: LAN {self.lan} {how} the host route {self.route}, which "
                "tunnelctl does not own; routing the LAN into the tunnel would divert the "
                "host's traffic. Choose another LAN or remove that route from the host")


def foreign_routes(text: str, interface: str) -> tuple[HostRoute, ...]:
    """Pure: the host's routes from `ip -4|-6 -json route show table all` that could be taken
    over (destinations on another device, any protocol, any table; not the default route)."""
    out = []
    for dst, dev, table, proto in parse_host_routes(text):
        if dev == interface:
            continue  # the tenant interface's own routes (5k at 16k tenants): never foreign
        net = ip_network(dst, strict=False)
        if net.prefixlen > 0:
            out.append(HostRoute(net, dev, table, proto))
    return tuple(out)


def route_conflicts(new_routes: Iterable[str], host: Iterable[HostRoute],
                    owners: Mapping[str, str]) -> tuple[RouteConflict, ...]:
    """Pure: each new route (a CIDR) that equals or overlaps a host route. `owners` maps a
    route's CIDR to the tenant file that asks for it."""
    host = tuple(host)
    # Each host route as an integer range per family: a cold converge asks about 5k LANs,
    # and building an ip_network for each cost more than the read of the host's routes.
    ranges = [(r.dst.version, int(r.dst.network_address), int(r.dst.broadcast_address), r)
              for r in host]
    found = []
    for dst in sorted(set(new_routes)):
        v4 = v4_prefix(dst)
        if v4 is not None:
            lo, hi = v4[0], v4[0] + (1 << (32 - v4[1])) - 1
            if not any(f == 4 and lo <= b and a <= hi for f, a, b, _ in ranges):
                continue  # no overlap: the common case, without an ip_network
        lan = ip_network(dst)
        found += [RouteConflict(owners.get(dst, "?"), lan, r) for r in host
                  if r.dst.version == lan.version and lan.overlaps(r.dst)]
    return tuple(found)


# Called by engine.cycle under the lock with the plan and what it was planned against, before
# anything is applied; a returned reason refuses the plan (failed_step "guard").
PlanGuard = Callable[[Plan, ObservedState], "str | None"]


def with_host_routes(then: PlanGuard | None, runner: Runner, interface: str,
                     owners: Mapping[str, str]) -> PlanGuard:
    """A plan guard (see engine.cycle.reconcile) that refuses a plan whose new routes conflict
    with host routes, then asks `then`. Reads the host's routes only when a route is added:
    for a few new IPv4 routes only the routes overlapping them (see overlapping_v4)."""

    def guard(plan: Plan, observed: ObservedState) -> str | None:
        new = [c.route.dst for c in plan.changes if isinstance(c, AddRoute)]
        if not new:
            return then(plan, observed) if then is not None else None
        host: tuple[HostRoute, ...] = ()
        v4 = [dst for dst in new if "." in dst]
        if v4 and len(v4) <= TARGETED_MAX:
            host += overlapping_v4(runner, v4, interface)
        elif v4:
            host += foreign_routes(runner.run(HOST_ROUTES_ARGV).stdout, interface)
        if any(":" in dst for dst in new):  # IPv6 routes only when needed
            host += foreign_routes(runner.run(HOST_ROUTES6_ARGV).stdout, interface)
        conflicts = route_conflicts(new, host, owners)
        if not conflicts:
            return then(plan, observed) if then is not None else None
        shown = "; ".join(str(c) for c in conflicts[:5])
        more = f" (and {len(conflicts) - 5} more)" if len(conflicts) > 5 else ""
        return f"refused: {shown}{more}"

    return guard


TARGETED_MAX = 4  # new IPv4 routes asked about one by one; more: the whole listing


def overlapping_v4(runner: Runner, dsts: list[str], interface: str) -> tuple[HostRoute, ...]:
    """The foreign IPv4 routes that overlap any of `dsts`, in every table: `root` lists the
    routes a prefix holds, `match` those that hold it, and two prefixes overlap exactly when
    one holds the other. Small reads, at once, instead of listing the host's whole table
    (5k tenant routes at 16k tenants: ~30 ms of a one-LAN change)."""
    argvs = [[*HOST_ROUTES_ARGV, how, dst] for dst in sorted(set(dsts))
             for how in ("root", "match")]
    with ThreadPoolExecutor(max_workers=len(argvs), thread_name_prefix="guard") as pool:
        texts = list(pool.map(lambda argv: runner.run(argv).stdout, argvs))
    found: dict[HostRoute, None] = {}  # each once, in the order read
    for text in texts:
        found.update(dict.fromkeys(foreign_routes(text, interface)))
    return tuple(found)


def lan_owners(repo: RepoState) -> Mapping[str, str]:
    """CIDR of each tenant LAN -> the tenant file that asks for it; built on first use (only
    a plan that adds routes reads it, and at 16k tenants building it costs ~0.05 s)."""
    return _LazyOwners(repo)


class _LazyOwners(Mapping[str, str]):
    def __init__(self, repo: RepoState) -> None:
        self._repo: RepoState | None = repo
        self._map: dict[str, str] = {}

    def _built(self) -> dict[str, str]:
        repo = self._repo
        if repo is not None:
            self._map = {str(lan): repo.paths.get(t.ident, t.ident)
                         for t in repo.tunnels for lan in (*t.lans, *t.lans6)}
            # The customer's /128 (routed when address6's prefix does not cover it).
            self._map.update((f"{t.customer_address6}/128", repo.paths.get(t.ident, t.ident))
                             for t in repo.tunnels if t.customer_address6 is not None)
            self._repo = None
        return self._map

    def __getitem__(self, key: str) -> str:
        return self._built()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._built())
