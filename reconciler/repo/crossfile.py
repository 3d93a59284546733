"""Rules that need more than one file: tunnel vs its gateway, and tunnels against each other.

Input are models that already passed the single-file stage. Output are Findings: a path, the
location of the offending key inside that file, and a message. A conflict between two files is
reported at both files, each naming the other one and its line (`conflict_partner` reads it
back): the loader cannot know which of the two is the newcomer; the service, which knows what
it applied, holds only the side that changed (gitops.admission).

Everything is linear or n log n (dicts and one sorted sweep per gateway), so a 16k-tenant repo
is checked in tens of milliseconds. IPv6 claims (subnet6, lans6) join the same sweep: their
integers are shifted above 2**128 (`gateway_rules.span6`), so they can never meet an IPv4 claim.
The rules of one tunnel against its gateway live in `reconciler.repo.gateway_rules`.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from ipaddress import IPv4Network, IPv6Network

from reconciler.repo.gateway_rules import FAMILIES, GatewayFacts, gateway_rules, span4, span6
from reconciler.repo.model import Gateway, Tunnel, TunnelStatus
from reconciler.repo.yamlio import Loc

# A revoked tunnel keeps its subnet this long, so a returning customer's old router can never
# reach someone else who got the same addresses.
REVOKED_HOLD = timedelta(days=30)

Locate = Callable[[str, Loc], tuple[int, int]]  # (path, loc) -> 1-based (line, col)


@dataclass(frozen=True)
class Finding:
    path: str
    loc: Loc
    message: str


@dataclass(frozen=True)
class TunnelFile:
    path: str  # repo-relative
    folder: str  # the org folder the file sits in
    stem: str  # file name without .yaml
    tunnel: Tunnel
    key: str = ""  # content key (git blob id); lets gateway-rule results be memoised


@dataclass(frozen=True)
class GatewayFile:
    path: str
    gateway: Gateway
    key: str = ""


# (tunnel content key, gateway content key) -> gateway-rule results as (loc, message) pairs
RuleMemo = dict[tuple[str, str], tuple[tuple[Loc, str], ...]]


# The other file of a cross-file conflict, as the messages below name it ("... of PATH:LINE (" /
# "... is also used by PATH:LINE ("): admission reads it to hold only the side that changed.
_PARTNER = re.compile(r"(?: of | is also used by )(\S+\.ya?ml):\d+ \(")


def conflict_partner(message: str) -> str | None:
    """The path of the other file a conflict finding names, or None for other findings."""
    m = _PARTNER.search(message)
    return m.group(1) if m else None


def holds_subnet(tunnel: Tunnel, today: date) -> bool:
    """Does this tunnel still own its subnet? Revoked ones do for REVOKED_HOLD."""
    if tunnel.status is not TunnelStatus.revoked:
        return True
    return tunnel.revoked_at is None or today - tunnel.revoked_at < REVOKED_HOLD


def _facts(gf: GatewayFile) -> GatewayFacts:
    return GatewayFacts(gf.path, gf.gateway)


def check_gateways(files: Sequence[GatewayFile]) -> list[Finding]:
    out: list[Finding] = []
    first: dict[str, GatewayFile] = {}
    for gf in files:
        gw = gf.gateway
        if gw.name in first:
            out.append(Finding(gf.path, ("name",), f"gateway name {gw.name!r} is already used by "
                               f"{first[gw.name].path}; each gateway needs its own name"))
        first.setdefault(gw.name, gf)
        for family in FAMILIES:  # the endpoint's family: its pool, reserved and routed ranges
            ip = family.endpoint(gw)
            if ip is None:
                continue
            pool = getattr(gw, family.key("pool"))
            checks: tuple[tuple[str, Sequence[IPv4Network | IPv6Network]], ...] = (
                (family.key("pool"), (pool,) if pool is not None else ()),
                (family.key("reserved"), getattr(gw, family.key("reserved"))),
                (family.key("routed_ranges"), getattr(gw, family.key("routed_ranges"))))
            for field, nets in checks:
                for i, net in enumerate(nets):
                    if ip in net:
                        loc: Loc = (field,) if field.startswith("pool") else (field, i)
                        out.append(Finding(gf.path, loc, f"{net} contains the public endpoint "
                                           f"{ip}; customers' routers would route the tunnel "
                                           "into itself. Remove the endpoint from this range"))
    return out


def _identity_rules(tf: TunnelFile) -> list[Finding]:
    t, out = tf.tunnel, []
    if t.org != tf.folder:
        out.append(Finding(tf.path, ("org",), f"org is {t.org!r} but the file is in the folder "
                           f"{tf.folder!r}; org must equal the folder name"))
    if t.name != tf.stem:
        out.append(Finding(tf.path, ("name",), f"name is {t.name!r} but the file is "
                           f"{tf.stem}.yaml; name must equal the file name (rename the file to "
                           f"{t.name}.yaml or fix name:)"))
    return out


# `which` of a claim: LAN number i >= 0, or one of these, or lans6 number LAN6 - which.
SUBNET, SUBNET6, LAN6 = -1, -2, -3


def _claim_of(tf: TunnelFile, which: int) -> tuple[IPv4Network | IPv6Network, str, Loc]:
    """A claim is an address range a tunnel routes to itself: its subnet, subnet6, a LAN or
    an IPv6 LAN, as `which` says (see SUBNET, SUBNET6, LAN6)."""
    t = tf.tunnel
    if which >= 0:
        return t.lans[which], "LAN", ("lans", which)
    if which == SUBNET:
        return t.subnet, "subnet", ("subnet",)
    if which == SUBNET6 and t.subnet6 is not None:
        return t.subnet6, "subnet6", ("subnet6",)
    return t.lans6[LAN6 - which], "LAN", ("lans6", LAN6 - which)


def _claims6(t: Tunnel, holds: bool) -> list[tuple[int, int, int]]:
    """The IPv6 claims of a tunnel that has any, as (lo, hi, which)."""
    out = []
    if holds and t.subnet6 is not None:
        lo, hi = span6(t.subnet6)
        out.append((lo, hi, SUBNET6))
    if t.status is not TunnelStatus.revoked:
        out.extend((*span6(lan), LAN6 - i) for i, lan in enumerate(t.lans6))
    return out


def _describe(tf: TunnelFile, which: int, locate: Locate) -> str:
    net, label, loc = _claim_of(tf, which)
    line, _ = locate(tf.path, loc)
    t = tf.tunnel
    extra = ""
    if t.status is TunnelStatus.revoked and t.revoked_at is not None:
        extra = (f", revoked on {t.revoked_at}; its subnet stays reserved until "
                 f"{t.revoked_at + REVOKED_HOLD}")
    return f"{label} {net} of {tf.path}:{line} ({t.ident}{extra})"


def _overlap_rules(tunnels: Sequence[TunnelFile], locate: Locate, today: date) -> list[Finding]:
    """One sweep over claims sorted by start; the heap holds claims still open at this start,
    and every one of them overlaps the current claim. Claims are plain int tuples
    (start, -end, tunnel index, which) because this runs over every tunnel on every load."""
    claims: list[tuple[int, int, int, int]] = []
    revoked = TunnelStatus.revoked
    for n, tf in enumerate(tunnels):
        t = tf.tunnel
        if holds_subnet(t, today):
            lo = int(t.subnet.network_address)
            claims.append((lo, -(lo + (1 << (32 - t.subnet.prefixlen)) - 1), n, -1))
        if t.lans and t.status is not revoked:  # a revoked tunnel routes nothing
            for i, lan in enumerate(t.lans):
                lo = int(lan.network_address)
                claims.append((lo, -(lo + (1 << (32 - lan.prefixlen)) - 1), n, i))
        if t.subnet6 is not None or t.lans6:
            claims.extend((lo, -hi, n, which)
                          for lo, hi, which in _claims6(t, holds_subnet(t, today)))
    claims.sort()
    end = -1
    for lo, neg_hi, _, _ in claims:  # fast path: a valid repo has no overlap at all
        if lo <= end:
            break
        end = -neg_hi
    else:
        return []
    out: list[Finding] = []
    open_: list[tuple[int, int, int]] = []  # (end, tunnel index, which)
    for lo, neg_hi, n, which in claims:
        while open_ and open_[0][0] < lo:
            heapq.heappop(open_)
        # All open claims overlap this one; report against one from another file (same-file
        # overlaps are the single-file LAN rule's business). A few looks suffice: open claims
        # overlap each other too, so each of them was reported when it was added.
        for _, m, other in open_[:8]:
            if tunnels[m].path != tunnels[n].path:
                for (ta, wa), (tb, wb) in (((n, which), (m, other)), ((m, other), (n, which))):
                    net_a, label_a, loc_a = _claim_of(tunnels[ta], wa)
                    net_b = _claim_of(tunnels[tb], wb)[0]
                    what = "uses the same addresses as" if net_a == net_b else "overlaps"
                    out.append(Finding(tunnels[ta].path, loc_a, f"{label_a} {net_a} {what} "
                                       f"{_describe(tunnels[tb], wb, locate)}; WireGuard routes "
                                       "an address to one peer only, so traffic would reach the "
                                       "wrong customer. Pick addresses no other tunnel uses"))
                break
        heapq.heappush(open_, (-neg_hi, n, which))
    return out


def _uniqueness_rules(tunnels: Sequence[TunnelFile], locate: Locate) -> list[Finding]:
    out: list[Finding] = []
    checks: tuple[tuple[str, Callable[[Tunnel], str], str], ...] = (
        ("public_key", lambda t: t.public_key, "public key"),
        ("name", lambda t: t.ident, "org/name"),
    )
    for field, keyof, what in checks:
        first: dict[str, TunnelFile] = {}
        for tf in tunnels:
            key = keyof(tf.tunnel)
            prior = first.setdefault(key, tf)
            if prior is tf:
                continue
            for a, b in ((tf, prior), (prior, tf)):
                line, _ = locate(b.path, (field,))
                out.append(Finding(a.path, (field,), f"{what} {key} is also used by "
                                   f"{b.path}:{line} ({b.tunnel.ident}); every tunnel needs "
                                   f"its own {what}"))
    return out


def check_tunnels(tunnels: Sequence[TunnelFile], gateways: Mapping[str, GatewayFile],
                  locate: Locate, today: date, *, gateways_complete: bool = True,
                  memo: RuleMemo | None = None) -> list[Finding]:
    """All rules for tunnels that passed the single-file stage.

    `gateways_complete` is False when a gateway file failed to load: a tunnel naming an unknown
    gateway may then refer to the broken one, so that is not reported again for every tunnel.
    `memo` keeps gateway-rule results by content keys across loads (they depend only on the
    two files' contents), so unchanged tunnels cost one dict lookup.
    """
    out: list[Finding] = []
    by_gateway: dict[str, list[TunnelFile]] = {}
    facts = {name: _facts(gf) for name, gf in gateways.items()}
    for tf in tunnels:
        t = tf.tunnel
        if t.org != tf.folder or t.name != tf.stem:
            out.extend(_identity_rules(tf))
        gf = facts.get(t.gateway)
        if gf is None:
            if gateways_complete:
                known = ", ".join(sorted(gateways)) or "none"
                out.append(Finding(tf.path, ("gateway",), f"gateway {tf.tunnel.gateway!r} does "
                                   f"not exist (known gateways: {known})"))
            continue
        key = gateways[t.gateway].key
        if memo is not None and tf.key and key:
            mkey = (tf.key, key)
            found = memo.get(mkey)
            if found is None:
                found = memo[mkey] = tuple(gateway_rules(t, gf))
            out.extend(Finding(tf.path, loc, message) for loc, message in found)
        else:
            out.extend(Finding(tf.path, loc, message) for loc, message in gateway_rules(t, gf))
        by_gateway.setdefault(tf.tunnel.gateway, []).append(tf)
    # Addresses only clash on the same interface; a customer may reach two gateways with the
    # same LAN for redundancy.
    for members in by_gateway.values():
        out.extend(_overlap_rules(members, locate, today))
    out.extend(_uniqueness_rules(tunnels, locate))
    gateway_keys = {gf.gateway.public_key: gf.path for gf in gateways.values()
                    if gf.gateway.public_key is not None}
    for tf in tunnels:
        if tf.tunnel.public_key in gateway_keys:
            out.append(Finding(tf.path, ("public_key",), f"public_key is the key of the gateway "
                               f"in {gateway_keys[tf.tunnel.public_key]}; use the customer "
                               "router's public key"))
    return out


# ------------------------------------------------------------------------ incremental


def _claims(tf: TunnelFile, today: date) -> list[tuple[int, int]]:
    """The address ranges a tunnel holds (as _overlap_rules counts them), as (lo, hi)."""
    t = tf.tunnel
    out = []
    holds = holds_subnet(t, today)
    if holds:
        out.append(span4(t.subnet))
    if t.lans and t.status is not TunnelStatus.revoked:
        out.extend(span4(lan) for lan in t.lans)
    if t.subnet6 is not None or t.lans6:
        out.extend((lo, hi) for lo, hi, _ in _claims6(t, holds))
    return out


class CleanIndex:
    """What the cross-file rules need to know about a repo that passed them all, kept so
    that the next load checks only the files that changed (the service loads every new
    commit; at 16k tunnels a full sweep costs ~0.2 s, one changed file microseconds).

    Exactness: it is used only while the previous load had no cross-file finding at all,
    with the same gateways and the same day. A changed file is then checked against the
    others; if it raises any finding at all, the caller runs the full check_tunnels, so the
    problems reported are always exactly those of a full load. Per gateway, the claims of a
    clean repo are pairwise disjoint, so sorted by start their ends are sorted too, and one
    claim can only overlap the one that starts last at or before its end.
    """

    def __init__(self, signature: object, today: date) -> None:
        self.signature = signature
        self.today = today
        self.keys: dict[str, str] = {}  # path -> content key
        self.files: dict[str, TunnelFile] = {}
        self.public_keys: dict[str, str] = {}  # public key -> path
        self.idents: dict[str, str] = {}  # org/name -> path
        self.starts: dict[str, list[int]] = {}  # gateway -> claim starts, sorted
        self.ends: dict[str, list[int]] = {}
        self.owners: dict[str, list[str]] = {}

    @classmethod
    def build(cls, tunnels: Sequence[TunnelFile], signature: object,
              today: date) -> CleanIndex | None:
        idx = cls(signature, today)
        claims: dict[str, list[tuple[int, int, str]]] = {}
        for tf in tunnels:
            if not idx._add_names(tf):
                return None
            claims.setdefault(tf.tunnel.gateway, []).extend(
                (lo, hi, tf.path) for lo, hi in _claims(tf, today))
        for gw, items in claims.items():
            items.sort()
            end = -1
            for lo, hi, _ in items:
                if lo <= end:
                    return None  # overlapping claims (same file): not the clean case
                end = hi
            idx.starts[gw] = [c[0] for c in items]
            idx.ends[gw] = [c[1] for c in items]
            idx.owners[gw] = [c[2] for c in items]
        return idx

    def _add_names(self, tf: TunnelFile) -> bool:
        t = tf.tunnel
        if self.public_keys.setdefault(t.public_key, tf.path) != tf.path:
            return False
        if self.idents.setdefault(t.ident, tf.path) != tf.path:
            return False
        self.keys[tf.path] = tf.key
        self.files[tf.path] = tf
        return True

    def remove(self, path: str) -> None:
        tf = self.files.pop(path)
        self.keys.pop(path, None)
        self.public_keys.pop(tf.tunnel.public_key, None)
        self.idents.pop(tf.tunnel.ident, None)
        gw = tf.tunnel.gateway
        starts, ends, owners = self.starts.get(gw, []), self.ends.get(gw, []), self.owners.get(gw, [])
        for lo, _ in _claims(tf, self.today):
            i = bisect.bisect_left(starts, lo)
            while i < len(starts) and starts[i] == lo and owners[i] != path:
                i += 1
            if i < len(starts) and starts[i] == lo:
                del starts[i], ends[i], owners[i]

    def add(self, tf: TunnelFile) -> bool:
        """Index one tunnel; False when it clashes with another (then use a full check)."""
        if not self._add_names(tf):
            return False
        gw = tf.tunnel.gateway
        starts = self.starts.setdefault(gw, [])
        ends = self.ends.setdefault(gw, [])
        owners = self.owners.setdefault(gw, [])
        mine = sorted(_claims(tf, self.today))
        for (_, hi), (lo2, _) in itertools.pairwise(mine):
            if lo2 <= hi:
                return False  # its own claims overlap: leave that to a full check
        for lo, hi in mine:
            i = bisect.bisect_right(starts, hi)
            if i > 0 and ends[i - 1] >= lo:
                return False
        for lo, hi in mine:
            i = bisect.bisect_right(starts, lo)
            starts.insert(i, lo)
            ends.insert(i, hi)
            owners.insert(i, tf.path)
        return True


def check_changed(index: CleanIndex, changed: Sequence[TunnelFile], removed: Sequence[str],
                  gateways: Mapping[str, GatewayFile], memo: RuleMemo) -> bool:
    """Update `index` for the changed and removed files of a clean repo; True when the repo
    is still clean (no finding at all), False when a full check_tunnels must run (the index
    is then stale and must be dropped)."""
    facts: dict[str, GatewayFacts] = {}
    gateway_keys = {gf.gateway.public_key for gf in gateways.values()
                    if gf.gateway.public_key is not None}
    for path in removed:
        index.remove(path)
    for tf in changed:
        if tf.path in index.files:
            index.remove(tf.path)
    for tf in changed:
        t = tf.tunnel
        if t.org != tf.folder or t.name != tf.stem or t.public_key in gateway_keys:
            return False
        gf = gateways.get(t.gateway)
        if gf is None:
            return False
        if tf.key and gf.key:
            found = memo.get((tf.key, gf.key))
            if found is None:
                f = facts.get(t.gateway) or facts.setdefault(t.gateway, _facts(gf))
                found = memo[(tf.key, gf.key)] = tuple(gateway_rules(t, f))
            if found:
                return False
        else:
            f = facts.get(t.gateway) or facts.setdefault(t.gateway, _facts(gf))
            if gateway_rules(t, f):
                return False
        if not index.add(tf):
            return False
    return True
