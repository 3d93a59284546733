"""IPv6 on a dual-stack gateway, the host side without a host: peers' AllowedIPs, interface
addresses, routes, the wg-quick file, what observe parses back, the host-route guard and the
ip -batch lines. The same against real tools is tests/test_engine_dualstack.py."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine import render as R
from reconciler.engine.commands import interface_commands, route_batch
from reconciler.engine.hostroutes import (
    HOST_ROUTES6_ARGV,
    HOST_ROUTES_ARGV,
    foreign_routes,
    route_conflicts,
    with_host_routes,
)
from reconciler.engine.hoststate import (
    ROUTE_PROTO,
    InterfaceConfig,
    ObservedState,
    Route,
    Secrets,
    canonical_ips,
)
from reconciler.engine.parsers import parse_ip_addr, parse_routes
from reconciler.engine.plan import AddRoute, Plan, SetInterface
from reconciler.engine.render import render_config, render_host, tunnel_allowed_ips
from reconciler.engine.runner import Result, Runner
from reconciler.engine.wgkeys import keypair
from reconciler.repo.model import Gateway, Tunnel

SECRET = bytes(range(32))
GW_PRIV = "EK0jUTd3Ge0AE4qXgHX01pRn/jhcQx/JMdQlbE3Xums="  # demo-only key (reconciler/lab/data)
V6 = {"address6": "fd42:4242:1::1/48", "pool6": "fd42:4242:1::/48"}


def gateway(**over: Any) -> Gateway:
    data: dict[str, Any] = {
        "name": "gw", "interface": "wg1", "address": "10.20.0.1/16", "pool": "10.20.0.0/16",
        "endpoint": "203.0.113.10:51821",
        "services": {"sip": {"proto": "udp", "ports": "5060,5080"}},
        "default_services": ["sip"], **V6}
    data.update(over)
    return Gateway.model_validate(data)


def tunnel(i: int, **over: Any) -> Tunnel:
    data: dict[str, Any] = {"org": f"org{i}", "name": "main", "gateway": "gw",
                            "public_key": keypair()[1],
                            "subnet": f"10.20.{i >> 6}.{(i & 63) * 4}/30"}
    data.update(over)
    return Tunnel.model_validate(data)


def render(gw: Gateway, tunnels: Sequence[Tunnel], config: bool = False) -> Any:
    R._last_host = None  # a whole render, not a patch of another test's
    return render_host(gw, tunnels, interface=None, private_key=GW_PRIV, host_secret=SECRET,
                       config_path=Path("/nonexistent/wg1.conf") if config else None)


# ------------------------------------------------------------------------------ render


def test_allowed_ips_add_the_customer_128_and_lans6_in_canonical_order() -> None:
    t = tunnel(1, subnet6="fd42:4242:1:5::/64", lans=["192.168.1.0/24"],
               lans6=["fd99:2::/48", "fd99:1:2::/48", "fd00:1::/64"])
    ips = tunnel_allowed_ips(t)
    assert ips == ("10.20.0.6/32", "192.168.1.0/24", "fd00:1::/64", "fd42:4242:1:5::2/128",
                   "fd99:1:2::/48", "fd99:2::/48")
    assert canonical_ips(ips) == ips  # the form plan compares in
    # What `wg show dump` prints (any order, comma-joined) reads back equal.
    shuffled = list(ips)
    random.Random(7).shuffle(shuffled)
    assert canonical_ips(",".join(shuffled).split(",")) == ips
    assert tunnel_allowed_ips(tunnel(2)) == ("10.20.0.10/32",)  # no subnet6: IPv4 only


def test_interface_holds_both_addresses_sorted_as_observe_reads_them() -> None:
    state, _ = render(gateway(), [tunnel(1)])
    assert state.interface.address == "10.20.0.1/16,fd42:4242:1::1/48"
    assert state.interface.addresses() == ("10.20.0.1/16", "fd42:4242:1::1/48")
    state4, _ = render(gateway(address6=None, pool6=None), [tunnel(1)])
    assert state4.interface.address == "10.20.0.1/16"


def test_lans6_routed_customer_128_only_outside_address6s_prefix() -> None:
    t = tunnel(1, subnet6="fd42:4242:1:5::/64", lans6=["fd99:1:2::/48"])
    inside, _ = render(gateway(), [t])
    assert inside.routes == {Route("fd99:1:2::/48", "wg1")}
    # address6 with a /64 on-link prefix does not cover the tenant's fd42:4242:1:5::/64.
    narrow, _ = render(gateway(address6="fd42:4242:1::1/64"), [t])
    assert narrow.routes == {Route("fd99:1:2::/48", "wg1"), Route("fd42:4242:1:5::2/128", "wg1")}


def test_config_file_lists_both_addresses_and_v6_allowed_ips() -> None:
    t = tunnel(1, subnet6="fd42:4242:1:5::/64", lans6=["fd99:1:2::/48"])
    _, secrets = render(gateway(), [t], config=True)
    text = secrets.config_text
    assert "\nAddress = 10.20.0.1/16, fd42:4242:1::1/48\n" in text
    assert "\nAllowedIPs = 10.20.0.6/32, fd42:4242:1:5::2/128, fd99:1:2::/48\n" in text
    _, plain = render(gateway(address6=None, pool6=None), [tunnel(1)], config=True)
    assert "\nAddress = 10.20.0.1/16\n" in plain.config_text


def test_spliced_config_equals_the_template_with_dual_stack_peers() -> None:
    tunnels = [tunnel(i, subnet6=f"fd42:4242:1:{i:x}::/64",
                      lans6=[f"fd99:{i:x}::/48"] if i % 2 else [])
               for i in range(1, R.SPLICE_MIN_PEERS + 6)]
    state, secrets = render(gateway(), tunnels, config=True)
    iface, peers = state.interface, state.peers
    spliced = render_config(iface, peers, Secrets(GW_PRIV, secrets.psks))
    old = R.SPLICE_MIN_PEERS
    try:
        R.SPLICE_MIN_PEERS = 1 << 30  # every peer through jinja
        whole = render_config(iface, peers, Secrets(GW_PRIV, secrets.psks))
    finally:
        R.SPLICE_MIN_PEERS = old
    assert spliced == whole == secrets.config_text


def test_patched_dual_stack_render_equals_a_whole_render() -> None:
    gw = gateway()
    tunnels = [tunnel(i, subnet6=f"fd42:4242:1:{i:x}::/64",
                      lans6=[f"fd99:{i:x}::/48"] if i % 3 == 0 else [])
               for i in range(1, R.PATCH_MIN + 20)]
    render(gw, tunnels, config=True)
    tunnels[5] = tunnel(6, public_key=tunnels[5].public_key, subnet6="fd42:4242:1:6::/64",
                        lans6=["fd99:abcd::/48"])
    tunnels[9] = tunnel(10, public_key=tunnels[9].public_key)  # loses its IPv6
    patched_state, patched_secrets = render_host(
        gw, tunnels, interface=None, private_key=GW_PRIV, host_secret=SECRET,
        config_path=Path("/nonexistent/wg1.conf"))
    assert R._last_host is not None and R._last_host[3] is not None  # it was patched
    whole_state, whole_secrets = render(gw, tunnels, config=True)
    assert patched_state == whole_state
    assert patched_secrets.config_text == whole_secrets.config_text
    assert Route("fd99:abcd::/48", "wg1") in whole_state.routes
    assert Route("fd99:6::/48", "wg1") not in whole_state.routes


# ----------------------------------------------------------------------------- observe

# `ip -json addr show dev wg1` of a wireguard-go interface with both addresses (iproute2 6.1).
IP_ADDR = json.dumps([{
    "ifindex": 5, "ifname": "wg1", "flags": ["POINTOPOINT", "MULTICAST", "NOARP", "UP",
                                             "LOWER_UP"],
    "mtu": 1420, "qdisc": "fq_codel", "operstate": "UNKNOWN", "link_type": "none",
    "addr_info": [
        {"family": "inet", "local": "10.20.0.1", "prefixlen": 16, "scope": "global",
         "label": "wg1"},
        {"family": "inet6", "local": "fd42:4242:1::1", "prefixlen": 48, "scope": "global"},
        {"family": "inet6", "local": "fe80::9f3a:1b2c:44d1:7e0a", "prefixlen": 64,
         "scope": "link", "flags": ["stable-privacy"]}]}])

# `ip -json route show table all dev wg1 proto 252`: both families; a /128 without "/128".
IP_ROUTES = json.dumps([
    {"dst": "192.168.1.0/24", "scope": "link", "flags": []},
    {"dst": "fd42:4242:1:5::2", "metric": 1024, "flags": [], "pref": "medium"},
    {"dst": "fd99:1:2::/48", "metric": 1024, "flags": [], "pref": "medium"},
    {"dst": "fd99:7::/48", "table": "100", "metric": 1024, "flags": [], "pref": "medium"}])


def test_ip_addr_reads_both_families_and_skips_link_local() -> None:
    link = parse_ip_addr(IP_ADDR)
    assert link is not None
    assert link.addresses == ("10.20.0.1/16", "fd42:4242:1::1/48")
    assert ",".join(link.addresses) == R.interface_address(gateway())


def test_routes_of_both_families_parse_to_what_render_gives() -> None:
    routes = parse_routes(IP_ROUTES, dev="wg1", proto=ROUTE_PROTO)
    assert routes == {Route("192.168.1.0/24", "wg1"), Route("fd42:4242:1:5::2/128", "wg1"),
                      Route("fd99:1:2::/48", "wg1"), Route("fd99:7::/48", "wg1", "100")}


# ---------------------------------------------------------------------------- commands


def test_route_and_address_lines_need_no_family_flag() -> None:
    add = [Route("fd99:1:2::/48", "wg1"), Route("fd42:4242:1:5::2/128", "wg1", "100")]
    assert route_batch(add, [Route("fd99:7::/48", "wg1")]) == (
        "route del fd99:7::/48 dev wg1 proto 252\n"
        "route replace fd99:1:2::/48 dev wg1 proto 252\n"
        "route replace fd42:4242:1:5::2/128 dev wg1 proto 252 table 100\n")
    old = InterfaceConfig("wg1", 51821, None, "10.20.0.1/16", 1420, True)
    new = InterfaceConfig("wg1", 51821, None, "10.20.0.1/16,fd42:4242:1::1/48", 1420, True)
    (batch,) = interface_commands("wg1", SetInterface(old, new), Secrets(None, {}), uapi=True)
    assert batch.redacted().endswith("address replace fd42:4242:1::1/48 dev wg1")
    (back,) = interface_commands("wg1", SetInterface(new, old), Secrets(None, {}), uapi=True)
    assert back.redacted().endswith("address del fd42:4242:1::1/48 dev wg1")


# -------------------------------------------------------------------------- host guard

# `ip -6 -json route show table all` on a host with a VPC IPv6 subnet (iproute2 6.1 shapes).
IP6_LISTING = json.dumps([
    {"dst": "default", "gateway": "fd00:1::1", "dev": "eth0", "protocol": "ra", "flags": []},
    {"dst": "fd00:1::/64", "dev": "eth0", "protocol": "kernel", "metric": 256, "flags": []},
    {"dst": "fd42:4242:1::/48", "dev": "wg1", "protocol": "kernel", "metric": 256,
     "flags": []},
    {"dst": "fd99:1:2::/48", "dev": "wg1", "protocol": "252", "metric": 1024, "flags": []},
    {"dst": "fe80::/64", "dev": "eth0", "protocol": "kernel", "metric": 256, "flags": []},
    {"type": "unreachable", "dst": "fd77::/16", "dev": "lo", "metric": 1024, "flags": []},
    {"type": "local", "dst": "fd00:1::5", "dev": "eth0", "table": "local",
     "protocol": "kernel", "metric": 0, "flags": []},
    {"type": "anycast", "dst": "fd00:1::", "dev": "eth0", "table": "local",
     "protocol": "kernel", "metric": 0, "flags": []},
    {"type": "multicast", "dst": "ff00::/8", "dev": "eth0", "table": "local",
     "protocol": "kernel", "metric": 256, "flags": []},
    {"dst": "fd55::/32", "gateway": "fd00:1::9", "dev": "eth0", "table": "100",
     "protocol": "static", "flags": []}])


def test_ipv6_host_routes_count_like_ipv4_ones() -> None:
    found = {(str(r.dst), r.dev, r.table) for r in foreign_routes(IP6_LISTING, "wg1")}
    assert found == {("fd00:1::/64", "eth0", "main"), ("fe80::/64", "eth0", "main"),
                     ("fd00:1::5/128", "eth0", "local"), ("fd55::/32", "eth0", "100")}


def test_ipv6_lans_equal_or_overlapping_a_host_route_conflict() -> None:
    host = foreign_routes(IP6_LISTING, "wg1")
    owners = {"fd00:1::/64": "a/x.yaml", "fd55:0:1::/48": "b/y.yaml", "fd00::/8": "c/z.yaml",
              "fd77:1::/48": "d/w.yaml", "fd56::/32": "e/v.yaml"}
    conflicts = route_conflicts(owners, host, owners)
    assert {(c.tenant_file, str(c.route.dst)) for c in conflicts} == {
        ("a/x.yaml", "fd00:1::/64"), ("a/x.yaml", "fd00:1::5/128"), ("b/y.yaml", "fd55::/32"),
        ("c/z.yaml", "fd00:1::/64"),
        ("c/z.yaml", "fd00:1::5/128"), ("c/z.yaml", "fd55::/32")}
    text = str(next(c for c in conflicts if c.tenant_file == "a/x.yaml"))
    assert "a/x.yaml: LAN fd00:1::/64 equals the host route fd00:1::/64 dev eth0" in text


class _Recorder(Runner):
    """Answers the two route listings from text and records what was read."""

    def __init__(self) -> None:
        super().__init__()
        self.read: list[list[str]] = []

    def run(self, argv: Sequence[str], *, stdin: str | bytes | None = None,
            check: bool = True, write: bool = False, timeout: float = 60.0,
            detach: bool = False) -> Result:
        self.read.append(list(argv))
        text = IP6_LISTING if "-6" in argv else "[]"
        return Result(tuple(argv), 0, text, "")


def _plan(*dsts: str) -> Plan:
    return Plan(tuple(AddRoute(Route(d, "wg1")) for d in dsts))


def test_guard_reads_each_family_only_when_a_route_of_it_is_added() -> None:
    observed = ObservedState(None, {}, frozenset(), None)
    # A few new IPv4 routes are asked about one by one (root and match, read at once).
    v4 = [[*HOST_ROUTES_ARGV, "match", "192.168.1.0/24"],
          [*HOST_ROUTES_ARGV, "root", "192.168.1.0/24"]]
    for dsts, reads, refused in (
            (("192.168.1.0/24",), v4, False),
            (("fd55:0:1::/48",), [HOST_ROUTES6_ARGV], True),
            (("192.168.1.0/24", "fd99:1::/48"), [*v4, HOST_ROUTES6_ARGV], False)):
        runner = _Recorder()
        guard = with_host_routes(None, runner, "wg1", {"fd55:0:1::/48": "b/y.yaml"})
        reason = guard(_plan(*dsts), observed)
        assert sorted(runner.read) == sorted(reads)
        assert (reason is not None) == refused, reason
        if refused:
            assert reason is not None and "b/y.yaml: LAN fd55:0:1::/48 overlaps" in reason


@pytest.mark.parametrize("lan", ["fd42:4242:1:9::/64"])
def test_the_gateways_own_prefix_on_the_tenant_interface_is_no_conflict(lan: str) -> None:
    assert route_conflicts([lan], foreign_routes(IP6_LISTING, "wg1"), {}) == ()
