"""IPv6 inside the tunnels, proven by real packets through the engine-configured cloud.

Two labs for the module. `dual`: a generated dual-stack repo (address6/pool6, reserved6,
routed_ranges6; tenants with subnet6, two with lans6, one sip-only, one IPv4-only) converged by
`reconcile()`. `v4gw`: a gateway without address6/pool6, whose router sends IPv6 anyway.

Blocked traffic is judged at the receiver (every namespace's probe server logs each arrival),
and every negative has a positive in the same test: an allowed packet that arrives, or, for the
isolation probes as a whole, the control test that deletes the engine's table and sees the very
same probes arrive. No assertion is about time.
"""

from __future__ import annotations

import base64
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine.cycle import ReconcileResult, reconcile
from reconciler.engine.plan import AddPeer, RemovePeer, UpdatePeer
from reconciler.engine.runner import Runner
from reconciler.lab import (
    GeneratedRepo,
    Lab,
    add_generated_tunnels,
    generate_repo,
    nonce,
    ping,
    tcp_probe,
    udp_probe,
)
from reconciler.lab.demo_checks import Roles, run_checks
from reconciler.lab.layout import Router
from reconciler.lab.repogen import LAN6_SPACE
from reconciler.repo.model import Tunnel
from reconciler.repo.state import load_repo

pytestmark = pytest.mark.lab

NEGATIVE_TIMEOUT = 0.5  # a local veth answers in well under a millisecond
SIP, SIP2, RTP, OUTSIDE, SSH = 5060, 5080, 10000, 8000, 22
Address = IPv4Address | IPv6Address


@dataclass(frozen=True)
class Cast:
    """The dual-stack lab and who plays which part (chosen from the repo's models)."""

    lab: Lab
    root: Path
    a: Router  # attacker: full services, IPv6 LAN host
    b: Router  # victim: another tenant with an IPv6 LAN host
    sip_only: Router  # subnet6, sip only
    v4_only: Router  # no subnet6 on the dual-stack gateway
    tunnels: dict[str, Tunnel]

    @property
    def cloud6(self) -> IPv6Address:
        assert self.lab.gateway.address6 is not None
        return self.lab.gateway.address6.ip

    @property
    def cloud4(self) -> IPv4Address:
        return self.lab.gateway.address.ip


def converge(lab: Lab, root: Path) -> ReconcileResult:
    result = reconcile(load_repo(root), lab.target())
    assert result.ok, f"{result.failed_step}: {result.error}"
    return result


def _router_with(lab: Lab, tunnels: dict[str, Tunnel], pick: Callable[[Tunnel], bool],
                 *, skip: tuple[str, ...] = ()) -> Router:
    return next(r for i, r in lab.routers.items() if i not in skip and pick(tunnels[i]))


@pytest.fixture(scope="module")
def dual(module_lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Cast:
    gen: GeneratedRepo = generate_repo(tmp_path_factory.mktemp("dual") / "repo", 5,
                                       gateway="gw-six", dual_stack=True, lan_every=2,
                                       sip_only_every=3, v4_only_every=5)
    tunnels = {t.ident: t for t in load_repo(gen.root).tunnels}
    lab: Lab = module_lab(gen.root, private_keys=gen.private_keys)
    converge(lab, gen.root)
    assert all(lab.wait_handshakes(lab.routers, timeout=12).values())
    a = _router_with(lab, tunnels, lambda t: bool(t.lans6) and t.services is None)
    b = _router_with(lab, tunnels, lambda t: bool(t.lans6), skip=(a.ident,))
    sip_only = _router_with(lab, tunnels, lambda t: t.subnet6 is not None
                            and t.services == ("sip",))
    v4_only = _router_with(lab, tunnels, lambda t: t.subnet6 is None)
    assert lab.infra is not None and lab.routed is not None and lab.routed.address6 is not None
    return Cast(lab, gen.root, a, b, sip_only, v4_only, tunnels)


@pytest.fixture(scope="module")
def hostile(dual: Cast) -> Cast:
    """A and B send the whole IPv6 pool, every IPv6 LAN, reserved6 and the IPv4 pool into their
    tunnels, as malicious customers could: only the cloud stands between them."""
    gw = dual.lab.gateway
    assert gw.pool6 is not None
    greedy: list[IPv4Network | IPv6Network] = [gw.pool6, *LAN6_SPACE, *gw.reserved6, gw.pool]
    for r in (dual.a, dual.b):
        dual.lab.route_into_tunnel(r.ident, greedy)
    assert all(dual.lab.wait_handshakes([dual.a.ident, dual.b.ident], timeout=8).values())
    return dual


def _udp_arrived(lab: Lab, src_ns: str, dst: Address, port: int, receiver_ns: str, *,
                 expect_echo: bool = False) -> bool:
    """One datagram; True when the receiver's server logged it. `expect_echo` also asserts
    the reply came back (an allowed probe)."""
    payload = nonce("six")
    echoed = udp_probe(src_ns, dst, port, payload=payload,
                       timeout=1.0 if expect_echo else NEGATIVE_TIMEOUT)
    if expect_echo:
        assert echoed, (src_ns, dst, port)
    arrived = lab.serve_log(receiver_ns).received(payload, dport=port)
    assert arrived or lab.dead_daemons() == []  # "never arrived" needs a live receiver
    return arrived


def _tcp_arrived(lab: Lab, src_ns: str, dst: Address, port: int, receiver_ns: str) -> bool:
    before = lab.serve_log(receiver_ns).connections(dport=port)
    tcp_probe(src_ns, dst, port, timeout=NEGATIVE_TIMEOUT)
    arrived = lab.serve_log(receiver_ns).connections(dport=port) > before
    assert arrived or lab.dead_daemons() == []
    return arrived


# -- a tenant and the cloud's own address6 -------------------------------------------------------
def test_a_tenant_reaches_its_services_on_address6_from_its_address_and_its_lan(
        dual: Cast) -> None:
    lab, a = dual.lab, dual.a
    assert a.host_netns and a.host_address6 and a.address6
    log = lab.serve_log(lab.netns)
    for src_ns, src in ((a.netns, a.address6), (a.host_netns, a.host_address6)):
        for port in (SIP, SIP2, RTP):
            payload = nonce("svc6")
            assert udp_probe(src_ns, dual.cloud6, port, payload=payload), (src, port)
            # Seen with the sender's own address: the IPv6 LAN is routed, not translated.
            assert log.received(payload, dport=port, src=src)
    assert ping(a.netns, dual.cloud6) and ping(a.host_netns, dual.cloud6)
    assert tcp_probe(lab.netns, dual.cloud6, SSH)  # the cloud's listener on address6 is there


def test_other_ports_on_address6_are_dropped(dual: Cast) -> None:
    lab, a, sip_only = dual.lab, dual.a, dual.sip_only
    # Positive controls first: the same senders get through on their services.
    assert _udp_arrived(lab, sip_only.netns, dual.cloud6, SIP, lab.netns, expect_echo=True)
    assert _udp_arrived(lab, a.netns, dual.cloud6, RTP, lab.netns, expect_echo=True)
    assert not _udp_arrived(lab, sip_only.netns, dual.cloud6, RTP, lab.netns)
    assert not _udp_arrived(lab, a.netns, dual.cloud6, OUTSIDE, lab.netns)
    assert a.host_netns
    assert not _udp_arrived(lab, a.host_netns, dual.cloud6, OUTSIDE, lab.netns)
    assert not _tcp_arrived(lab, a.netns, dual.cloud6, SSH, lab.netns)
    assert not _tcp_arrived(lab, a.netns, dual.cloud6, OUTSIDE, lab.netns)


def test_an_ipv4_only_tunnel_gets_no_ipv6_on_a_dual_stack_gateway(dual: Cast) -> None:
    """Its router configures IPv6 anyway (an address from the pool and a route to address6):
    neither WireGuard nor the table lets it in; its IPv4 works."""
    lab, r = dual.lab, dual.v4_only
    assert r.address6 is None
    tunnel = dual.tunnels[r.ident]
    assert tunnel.subnet6 is None and lab.gateway.pool6 is not None
    stray = list(lab.gateway.pool6.subnets(new_prefix=64))[-1]  # never allocated
    lab.add_router_address(r.ident, f"{stray[2]}/64")
    lab.route_into_tunnel(r.ident, [f"{dual.cloud6}/128"])
    assert _udp_arrived(lab, r.netns, dual.cloud4, SIP, lab.netns, expect_echo=True)
    assert not _udp_arrived(lab, r.netns, dual.cloud6, SIP, lab.netns)
    assert not ping(r.netns, dual.cloud6, timeout=NEGATIVE_TIMEOUT)


# -- tenant to tenant, infrastructure, routed ranges -------------------------------------------
def _forbidden6(c: Cast) -> dict[str, bool]:
    """Send every forbidden IPv6 packet once; True where it ARRIVED at its target's server."""
    lab, a, b, infra = c.lab, c.a, c.b, c.lab.infra
    assert infra is not None and lab.routed is not None and lab.routed.address6 is not None
    assert a.host_netns and b.host_netns and b.address6 and b.host_address6
    svc6 = lab.routed.address6
    return {
        "A router -> B address6": _udp_arrived(lab, a.netns, b.address6, SIP, b.netns),
        "A LAN host -> B address6": _udp_arrived(lab, a.host_netns, b.address6, SIP, b.netns),
        "A router -> B LAN host6": _udp_arrived(lab, a.netns, b.host_address6, SIP, b.host_netns),
        "A LAN host -> B LAN host6": _udp_arrived(lab, a.host_netns, b.host_address6, SIP,
                                                  b.host_netns),
        "A router -> infra host6": _udp_arrived(lab, a.netns, infra.address6, SIP, infra.netns),
        "A router -> infra host6 TCP 22": _tcp_arrived(lab, a.netns, infra.address6, SSH,
                                                       infra.netns),
        "A router -> cloud's infra address6": _udp_arrived(lab, a.netns, infra.cloud_address6,
                                                           SIP, lab.netns),
        "A router -> routed host6 UDP 8000": _udp_arrived(lab, a.netns, svc6, OUTSIDE,
                                                          lab.routed.netns),
        "A router -> routed host6 TCP 22": _tcp_arrived(lab, a.netns, svc6, SSH,
                                                        lab.routed.netns),
        "A router -> cloud address6 UDP 8000": _udp_arrived(lab, a.netns, c.cloud6, OUTSIDE,
                                                            lab.netns),
    }


def test_tenants_infrastructure_and_other_ports_are_unreachable_over_ipv6(hostile: Cast) -> None:
    arrived = _forbidden6(hostile)
    assert [label for label, got in arrived.items() if got] == []
    lab, a, b = hostile.lab, hostile.a, hostile.b
    assert b.address6 and lab.infra
    assert not ping(a.netns, b.address6, timeout=NEGATIVE_TIMEOUT)
    assert not ping(a.netns, lab.infra.address6, timeout=NEGATIVE_TIMEOUT)
    # ...while A's allowed IPv6 still flows, hostile routes and all.
    assert _udp_arrived(lab, a.netns, hostile.cloud6, SIP, lab.netns, expect_echo=True)
    # And the IPv4 side of the same lab: allowed in, tenant to tenant dropped.
    assert _udp_arrived(lab, a.netns, hostile.cloud4, SIP, lab.netns, expect_echo=True)
    assert not _udp_arrived(lab, a.netns, b.address, SIP, b.netns)


def test_routed_ranges6_are_reachable_on_the_tenants_services_only(dual: Cast) -> None:
    lab, a, sip_only = dual.lab, dual.a, dual.sip_only
    svc = lab.routed
    assert svc is not None and svc.address6 is not None and a.host_netns
    assert _udp_arrived(lab, a.netns, svc.address6, SIP, svc.netns, expect_echo=True)
    assert _udp_arrived(lab, a.netns, svc.address6, RTP, svc.netns, expect_echo=True)
    assert _udp_arrived(lab, a.host_netns, svc.address6, SIP2, svc.netns, expect_echo=True)
    assert _udp_arrived(lab, sip_only.netns, svc.address6, SIP, svc.netns, expect_echo=True)
    assert not _udp_arrived(lab, sip_only.netns, svc.address6, RTP, svc.netns)
    assert not _udp_arrived(lab, a.netns, svc.address6, OUTSIDE, svc.netns)
    assert not _tcp_arrived(lab, a.netns, svc.address6, SSH, svc.netns)


def test_a_spoofed_ipv6_source_is_dropped(hostile: Cast) -> None:
    lab, a, b = hostile.lab, hostile.a, hostile.b
    assert a.address6 and b.address6
    log = lab.serve_log(lab.netns)
    own, legit, forged, foreign = (nonce(x) for x in ("own6", "legit6", "forged6", "foreign6"))
    # The same code path (IPV6_TRANSPARENT, explicit source) with A's own address: accepted.
    assert udp_probe(a.netns, hostile.cloud6, SIP, payload=own, src=a.address6, spoof=True)
    # B may send to SIP, so the table would let B's address in: only WireGuard's cryptokey
    # routing can stop A sending as B.
    assert udp_probe(b.netns, hostile.cloud6, SIP, payload=legit)
    udp_probe(a.netns, hostile.cloud6, SIP, payload=forged, src=b.address6, spoof=True,
              timeout=NEGATIVE_TIMEOUT)
    # An address in nobody's AllowedIPs (from the pool, never allocated).
    assert lab.gateway.pool6 is not None
    unused = list(lab.gateway.pool6.subnets(new_prefix=64))[-2][2]
    udp_probe(a.netns, hostile.cloud6, SIP, payload=foreign, src=unused, spoof=True,
              timeout=NEGATIVE_TIMEOUT)
    assert log.received(own, src=a.address6) and log.received(legit, src=b.address6)
    assert not log.received(forged) and not log.received(foreign)
    assert lab.dead_daemons() == []


def test_control_without_the_table_the_same_ipv6_probes_arrive(hostile: Cast) -> None:
    """Proves the probes can see a leak: delete the engine's table, probe, re-converge."""
    lab = hostile.lab
    Runner(lab.netns).run(["nft", "delete", "table", "inet", "tunnelctl"])
    try:
        arrived = _forbidden6(hostile)
    finally:
        repaired = converge(lab, hostile.root)
    assert [label for label, got in arrived.items() if not got] == []
    assert not repaired.plan.empty  # the missing table was seen and restored
    assert [label for label, got in _forbidden6(hostile).items() if got] == []


def test_the_demo_isolation_report_covers_ipv6_on_a_dual_stack_gateway(dual: Cast) -> None:
    steps: list[str] = []
    results = run_checks(dual.lab, Roles(dual.a.ident, dual.sip_only.ident, dual.b.ident, None),
                         progress=steps.append)
    assert [(r.name, r.observed) for r in results if not r.passed] == []
    six = [r for r in results if "IPv6" in r.name]
    assert {r.expected for r in six} == {"allowed", "blocked"} and len(six) == 5
    assert f"[{dual.cloud6}] udp/{SIP}" in {r.destination for r in six}
    # The whole report, word for word and in order: each step prints one line of it.
    a, s, infra = dual.a.ident, dual.sip_only, dual.lab.infra
    assert infra is not None and dual.b.host_address is not None
    c4, c6 = dual.cloud4, f"[{dual.cloud6}]"
    lan_phone = [("LAN phone to the cloud", "phone on routed LAN → SIP",
                  f"{a} LAN {dual.a.host_address}", f"{c4} udp/{SIP}", "allowed")]
    expected = [
        ("tenant to its own SIP port", "tenant → own SIP port", a, f"{c4} udp/{SIP}", "allowed"),
        *(lan_phone if dual.a.host_netns and dual.a.host_address else []),
        ("tenant with RTP to RTP", "tenant with RTP → RTP", a, f"{c4} udp/{RTP}", "allowed"),
        ("tenant without RTP to RTP", "tenant without RTP → RTP", s.ident, f"{c4} udp/{RTP}",
         "blocked"),
        ("tenant to cloud SSH", "tenant → cloud SSH", a, f"{c4} tcp/{SSH}", "blocked"),
        ("tenant to another tenant", "tenant → other tenant", a, f"{s.address} udp/{SIP}",
         "blocked"),
        ("tenant to another tenant's LAN", "tenant → other tenant's LAN", s.ident,
         f"{dual.b.host_address} udp/{SIP}", "blocked"),
        ("tenant to infrastructure", f"tenant → infrastructure ({infra.cloud_interface})", a,
         f"{infra.address} udp/{SIP}", "blocked"),
        ("spoofed source address", "spoofed source (other tenant's address)",
         f"{a} as {s.address}", f"{c4} udp/{SIP}", "blocked"),
        ("IPv6: tenant to its own SIP port", "tenant → own SIP port (IPv6)", a,
         f"{c6} udp/{SIP}", "allowed"),
        ("IPv6: tenant without RTP to RTP", "tenant without RTP → RTP (IPv6)", s.ident,
         f"{c6} udp/{RTP}", "blocked"),
        ("IPv6: tenant to another tenant", "tenant → other tenant (IPv6)", a,
         f"[{s.address6}] udp/{SIP}", "blocked"),
        ("IPv6: tenant to infrastructure",
         f"tenant → infrastructure ({infra.cloud_interface}, IPv6)", a,
         f"[{infra.address6}] udp/{SIP}", "blocked"),
        ("IPv6: spoofed source address", "spoofed IPv6 source (other tenant's address)",
         f"{a} as {s.address6}", f"{c6} udp/{SIP}", "blocked"),
    ]
    assert [(step, r.name, r.source, r.destination, r.expected)
            for step, r in zip(steps, results, strict=True)] == expected


@pytest.mark.parametrize("target", ["address6", "routed_ranges6"])
def test_packet_too_big_from_a_tenant_reaches_the_sender(dual: Cast, target: str) -> None:
    """A customer LAN with a smaller MTU than the tunnel (1280 < 1420): a big reply needs the
    router's Packet Too Big to reach its sender; then the retry fits. The error travels in
    the connection's original direction, so the reply-only accept does not cover it: the
    table accepts ICMP errors that conntrack marks related, in both chains."""
    lab, a = dual.lab, dual.a
    assert a.host_netns and lab.routed and lab.routed.address6
    dst, receiver = ((dual.cloud6, lab.netns) if target == "address6"
                     else (lab.routed.address6, lab.routed.netns))
    payload = nonce("pmtu") + "x" * 1300  # fits the tunnel, not the customer's LAN
    try:
        for ns, dev in ((a.netns, "lan0"), (a.host_netns, "eth0")):
            Runner(ns).run(["ip", "link", "set", dev, "mtu", "1280"])
        echoed = [udp_probe(a.host_netns, dst, SIP, payload=payload) for _ in range(3)]
    finally:
        for ns, dev in ((a.netns, "lan0"), (a.host_netns, "eth0")):
            Runner(ns).run(["ip", "link", "set", dev, "mtu", "1500"])
    assert lab.serve_log(receiver).received(payload)  # the request arrived: the reply is lost
    assert echoed[-1], echoed


# -- changes while traffic flows ---------------------------------------------------------------
def test_a_changed_service_profile_moves_the_tenants_ipv6_access(dual: Cast, tmp_path: Path) -> None:
    """The sip-only tenant becomes rtp-only: its IPv6 map entry changes verdict in place."""
    lab, r = dual.lab, dual.sip_only
    repo = tmp_path / "repo"
    shutil.copytree(dual.root, repo)
    tunnel = dual.tunnels[r.ident]
    tunnel_file = repo / tunnel.org / f"{tunnel.name}.yaml"
    tunnel_file.write_text(tunnel_file.read_text().replace("services: [sip]", "services: [rtp]"))
    try:
        converge(lab, repo)
        assert _udp_arrived(lab, r.netns, dual.cloud6, RTP, lab.netns, expect_echo=True)
        assert not _udp_arrived(lab, r.netns, dual.cloud6, SIP, lab.netns)
    finally:
        converge(lab, dual.root)
    assert _udp_arrived(lab, r.netns, dual.cloud6, SIP, lab.netns, expect_echo=True)
    assert not _udp_arrived(lab, r.netns, dual.cloud6, RTP, lab.netns)


def test_an_ipv6_flow_loses_nothing_while_dual_stack_tenants_come_and_go(
        dual: Cast, tmp_path: Path) -> None:
    big = tmp_path / "repo"
    shutil.copytree(dual.root, big)
    added = add_generated_tunnels(big, 40, gateway=dual.lab.gateway.name, org_prefix="more",
                                  lan_every=2)
    assert load_repo(big).problems == () and all(t.subnet6 for t in added)
    assert sum(1 for t in added if t.lans6) == 20
    assert dual.a.host_netns
    flow = dual.lab.flow(dual.a.host_netns, dual.cloud6, interval=0.02)
    flow.wait_ready(timeout=10)
    time.sleep(0.3)
    grow = converge(dual.lab, big)
    time.sleep(0.3)
    shrink = converge(dual.lab, dual.root)
    time.sleep(0.3)
    result = flow.stop()
    assert len(grow.plan.of(AddPeer)) == 40 and len(shrink.plan.of(RemovePeer)) == 40
    assert result.sent >= 30 and result.lost == ()


# -- a gateway without IPv6 ------------------------------------------------------------------
@dataclass(frozen=True)
class V4Gateway:
    lab: Lab
    root: Path
    router: Router
    public_key: str  # the router's tunnel key, as the cloud's peer knows it


@pytest.fixture(scope="module")
def v4gw(module_lab: Any, tmp_path_factory: pytest.TempPathFactory) -> V4Gateway:
    gen = generate_repo(tmp_path_factory.mktemp("v4gw") / "repo", 2, gateway="gw-four",
                        lan_every=0, sip_only_every=0)
    lab: Lab = module_lab(gen.root, private_keys=gen.private_keys)
    assert not lab.gateway.dual_stack and lab.infra is not None and lab.routed is None
    converge(lab, gen.root)
    tunnel = gen.tunnels[0]
    router = lab.routers[tunnel.ident]
    assert lab.wait_handshake(tunnel.ident, timeout=12)
    # The customer configures IPv6 the gateway does not offer, and routes all of it to us.
    lab.add_router_address(tunnel.ident, "fd42:4242:1:5::2/64")
    lab.route_into_tunnel(tunnel.ident, [IPv6Network("::/0")])
    assert lab.wait_handshake(tunnel.ident, timeout=8)
    return V4Gateway(lab, gen.root, router, tunnel.public_key)


def _v6_to_the_host(g: V4Gateway) -> dict[str, bool]:
    """IPv6 from the tenant to every IPv6 address on the host's side; True where it arrived.

    UDP only: the cloud has no IPv6 route back to the tenant, so a TCP handshake could not
    complete (and be logged) even without any firewall."""
    lab, r, infra = g.lab, g.router, g.lab.infra
    assert infra is not None
    return {
        "cloud's infra address6": _udp_arrived(lab, r.netns, infra.cloud_address6, SIP,
                                               lab.netns),
        "infra host6": _udp_arrived(lab, r.netns, infra.address6, SIP, infra.netns),
    }


def _allowed_ips(lab: Lab, public_key: str) -> set[str]:
    out = Runner(lab.netns).run(["wg", "show", lab.interface, "allowed-ips"]).stdout
    for line in out.splitlines():
        key, _, nets = line.partition("\t")
        if key == public_key:
            return set(nets.split())
    raise AssertionError(f"no peer {public_key} on {lab.interface}")


def test_a_gateway_without_ipv6_lets_no_tenant_ipv6_reach_the_host(v4gw: V4Gateway) -> None:
    lab, r = v4gw.lab, v4gw.router
    # Positive control: the tenant's IPv4 works, and the host's IPv6 listeners are there.
    assert _udp_arrived(lab, r.netns, lab.gateway.address.ip, SIP, lab.netns, expect_echo=True)
    assert lab.infra is not None
    assert _udp_arrived(lab, lab.infra.netns, lab.infra.cloud_address6, SIP, lab.netns,
                        expect_echo=True)
    assert [label for label, got in _v6_to_the_host(v4gw).items() if got] == []


def test_a_hand_widened_peer_still_meets_the_tables_ipv6_drop(v4gw: V4Gateway) -> None:
    """AllowedIPs widened to ::/0 by hand (an operator's mistake): cryptokey routing now lets
    the tenant's IPv6 in, and the table's final drops, family-agnostic in the inet table, stop
    it. Control: without the table the same packets arrive. The next cycle repairs both."""
    lab = v4gw.lab
    key_hex = base64.b64decode(v4gw.public_key).hex()
    Runner().uapi(lab.interface, f"set=1\npublic_key={key_hex}\nupdate_only=true\n"
                                 "allowed_ip=::/0\n\n", write=True)
    assert "::/0" in _allowed_ips(lab, v4gw.public_key)
    try:
        with_table = _v6_to_the_host(v4gw)
        Runner(lab.netns).run(["nft", "delete", "table", "inet", "tunnelctl"])
        without_table = _v6_to_the_host(v4gw)
    finally:
        repaired = converge(lab, v4gw.root)
    assert [label for label, got in with_table.items() if got] == []
    assert [label for label, got in without_table.items() if not got] == []
    assert repaired.plan.of(UpdatePeer)  # the hand-widened AllowedIPs were drift
    assert "::/0" not in _allowed_ips(lab, v4gw.public_key)
    assert [label for label, got in _v6_to_the_host(v4gw).items() if got] == []


# -- an address6 prefix that does not cover the tenants --------------------------------------------
def test_customer_128s_outside_address6s_prefix_are_routed(lab: Any, tmp_path: Path) -> None:
    """address6 with a /64 (not the pool's /48): each customer's ::2 needs its own /128 route
    for the replies. Control: without that route the request still arrives, the echo does not."""
    gen = generate_repo(tmp_path / "repo", 2, gateway="gw-narrow", dual_stack=True, lan_every=0)
    gw_file = gen.root / "gateway.yaml"
    gw_file.write_text(gw_file.read_text().replace("address6: fd42:4242:1::1/48",
                                                   "address6: fd42:4242:1::1/64"))
    built: Lab = lab(gen.root, private_keys=gen.private_keys)
    converge(built, gen.root)
    r = next(iter(built.routers.values()))
    assert r.address6 and built.gateway.address6 and built.wait_handshake(r.ident, timeout=12)
    assert r.address6 not in built.gateway.address6.network
    cloud6, log = built.gateway.address6.ip, built.serve_log(built.netns)
    assert _udp_arrived(built, r.netns, cloud6, SIP, built.netns, expect_echo=True)
    Runner(built.netns).run(["ip", "-6", "route", "del", f"{r.address6}/128", "dev",
                             built.interface, "proto", "252"])
    payload = nonce("noroute")
    assert not udp_probe(r.netns, cloud6, SIP, payload=payload, timeout=NEGATIVE_TIMEOUT)
    assert log.received(payload, src=r.address6)
    assert built.dead_daemons() == []  # the server could not answer, and kept serving
    assert not converge(built, gen.root).plan.empty  # the missing route is drift, restored
    assert _udp_arrived(built, r.netns, cloud6, SIP, built.netns, expect_echo=True)
