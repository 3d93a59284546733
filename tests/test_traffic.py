"""Real traffic through the engine-configured cloud: handshakes, SIP echo, and isolation.

One lab per module: the shipped tenants/ examples (a router for every tunnel, the disabled
one included) converged by `reconcile()`. Blocked traffic is judged at the receiver: every
namespace runs a probe server that logs each arrival, so "A cannot reach B" means B never saw
A's packet, not merely that no reply came back. A control test removes the firewall and shows
the very same probes then DO arrive, so none of these assertions can pass vacuously.
"""

from __future__ import annotations

import shutil
import time
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine import wgkeys
from reconciler.engine.cycle import reconcile
from reconciler.engine.plan import AddPeer, RemovePeer, UpdatePeer
from reconciler.engine.runner import Runner
from reconciler.lab import (
    Lab,
    add_generated_tunnels,
    demo_private_keys,
    nonce,
    ping,
    tcp_probe,
    udp_probe,
)
from reconciler.repo.state import load_repo

pytestmark = pytest.mark.lab

TENANTS = Path(__file__).resolve().parent.parent / "tenants"
CLOUD_IP = "10.20.0.1"
ACTIVE = ("acme-voip/hq", "bluebird-telecom/main", "carrot-dental/clinic")
DISABLED = "carrot-dental/branch"
A, B = "acme-voip/hq", "carrot-dental/clinic"  # A attacks B; both have a LAN host
SIP_ONLY = "bluebird-telecom/main"
NEGATIVE_TIMEOUT = 0.5  # a local veth answers in well under a millisecond


def converge(lab: Lab, repo: Path = TENANTS) -> Any:
    result = reconcile(load_repo(repo), lab.target())
    assert result.ok, f"{result.failed_step}: {result.error}"
    return result


@pytest.fixture(scope="module")
def cloud(module_lab: Any) -> Lab:
    lab: Lab = module_lab(TENANTS)
    assert set(lab.routers) == {*ACTIVE, DISABLED}
    converge(lab)
    return lab


@pytest.fixture(scope="module")
def hostile(cloud: Lab) -> Lab:
    """A and B now send the whole pool, every LAN and the infra range into their tunnels,
    as a malicious customer could: only the cloud stands between them."""
    greedy = [IPv4Network("10.20.0.0/16"), IPv4Network("192.168.0.0/16"),
              IPv4Network("10.10.10.0/24")]
    for ident in (A, B):
        cloud.route_into_tunnel(ident, greedy)
    assert all(cloud.wait_handshakes([A, B], timeout=8).values())
    return cloud


def test_every_active_router_handshakes_and_pings_the_cloud(cloud: Lab) -> None:
    # The routers were started before the cloud knew them: they must recover on their own.
    done = cloud.wait_handshakes(ACTIVE, timeout=12)
    assert done == {i: True for i in ACTIVE}
    for ident in ACTIVE:
        assert ping(cloud.routers[ident].netns, CLOUD_IP), ident


def test_the_disabled_tunnels_router_gets_no_handshake(cloud: Lab) -> None:
    cloud.configure_router(DISABLED)  # fresh peer: initiates a handshake immediately
    time.sleep(1.5)
    assert cloud.latest_handshake(DISABLED) == 0
    assert not ping(cloud.routers[DISABLED].netns, CLOUD_IP, timeout=NEGATIVE_TIMEOUT)


def test_a_lan_host_reaches_sip_through_the_tunnel_and_gets_the_reply(cloud: Lab) -> None:
    cloud_log = cloud.serve_log(cloud.netns)
    for ident in (A, B):
        r = cloud.routers[ident]
        assert r.host_netns and r.host_address
        for port in (5060, 5080):
            payload = nonce("sip")
            assert udp_probe(r.host_netns, CLOUD_IP, port, payload=payload), (ident, port)
            # Seen at the cloud with the LAN host's own address: no NAT, the LAN is routed.
            assert cloud_log.received(payload, dport=port, src=r.host_address)


def test_each_tenant_reaches_only_its_own_services(cloud: Lab) -> None:
    cloud_log = cloud.serve_log(cloud.netns)
    acme, bluebird = cloud.routers[A], cloud.routers[SIP_ONLY]
    assert udp_probe(acme.netns, CLOUD_IP, 10000)  # acme has rtp (default services)
    assert udp_probe(bluebird.netns, CLOUD_IP, 5060)  # bluebird has sip only
    for netns, port in ((bluebird.netns, 10000), (bluebird.netns, 20000),
                        (acme.netns, 8000), (bluebird.netns, 8000)):
        payload = nonce("port")
        assert not udp_probe(netns, CLOUD_IP, port, payload=payload, timeout=NEGATIVE_TIMEOUT)
        assert not cloud_log.received(payload), (netns, port)


def test_cloud_ssh_is_closed_to_tenants(cloud: Lab) -> None:
    before = cloud.serve_log(cloud.netns).connections(dport=22)
    assert tcp_probe(cloud.netns, CLOUD_IP, 22)  # the listener is there...
    for ident in (A, SIP_ONLY):
        assert not tcp_probe(cloud.routers[ident].netns, CLOUD_IP, 22, timeout=NEGATIVE_TIMEOUT)
    # ...and only the cloud's own connection ever reached it.
    assert cloud.serve_log(cloud.netns).connections(dport=22) == before + 1


def test_psk_rotation_and_key_change_need_the_new_router_config(cloud: Lab,
                                                                tmp_path: Path) -> None:
    """The cloud side changes from the repo; the customer's old config stops working, the new
    one works: the same round trip ops do with a customer (`Lab.configure_router`)."""
    repo = tmp_path / "repo"
    shutil.copytree(TENANTS, repo)
    tunnel_file = repo / "bluebird-telecom" / "main.yaml"
    original = tunnel_file.read_text()
    router = cloud.routers[SIP_ONLY]
    try:
        tunnel_file.write_text(original.replace("psk_rotation: 0", "psk_rotation: 1"))
        assert converge(cloud, repo).plan.of(UpdatePeer)
        cloud.configure_router(SIP_ONLY)  # reconnect with the old PSK: the handshake fails
        time.sleep(1.0)
        assert cloud.latest_handshake(SIP_ONLY) == 0
        cloud.reload_tunnel(SIP_ONLY, repo)  # the customer enters the new PSK
        assert cloud.wait_handshake(SIP_ONLY, timeout=5)
        assert udp_probe(router.netns, CLOUD_IP, 5060)

        new_private, new_public = wgkeys.keypair()
        tunnel_file.write_text(original.replace(
            next(ln for ln in original.splitlines() if ln.startswith("public_key:")),
            f"public_key: {new_public}"))
        changed = converge(cloud, repo)
        assert changed.plan.of(AddPeer) and changed.plan.of(RemovePeer)
        cloud.configure_router(SIP_ONLY, psk_rotation=0)  # old key: the cloud ignores it
        time.sleep(1.0)
        assert cloud.latest_handshake(SIP_ONLY) == 0
        cloud.configure_router(SIP_ONLY, private_key=new_private)
        assert cloud.wait_handshake(SIP_ONLY, timeout=5)
        assert udp_probe(router.netns, CLOUD_IP, 5060)
    finally:
        converge(cloud)
        cloud.configure_router(SIP_ONLY, private_key=demo_private_keys()[SIP_ONLY],
                               psk_rotation=0)
    assert cloud.wait_handshake(SIP_ONLY, timeout=5)


def _forbidden_probes(lab: Lab) -> dict[str, bool]:
    """Send every forbidden packet once; True where it ARRIVED at its target's probe server."""
    a, b, infra = lab.routers[A], lab.routers[B], lab.infra
    assert infra is not None and a.host_netns and b.host_netns and b.host_address
    arrived: dict[str, bool] = {}

    def udp(label: str, src_ns: str, dst: Any, port: int, receiver_ns: str) -> None:
        payload = nonce(label)
        udp_probe(src_ns, dst, port, payload=payload, timeout=NEGATIVE_TIMEOUT)
        arrived[label] = lab.serve_log(receiver_ns).received(payload)

    udp("A router -> B tunnel address", a.netns, b.address, 5060, b.netns)
    udp("A LAN host -> B tunnel address", a.host_netns, b.address, 5060, b.netns)
    udp("A router -> B LAN host", a.netns, b.host_address, 5060, b.host_netns)
    udp("A LAN host -> B LAN host", a.host_netns, b.host_address, 5060, b.host_netns)
    udp("A router -> infra host", a.netns, infra.address, 5060, infra.netns)
    udp("A router -> cloud UDP 8000", a.netns, CLOUD_IP, 8000, lab.netns)
    udp("sip-only tenant -> cloud RTP", lab.routers[SIP_ONLY].netns, CLOUD_IP, 10000, lab.netns)
    ssh_before = lab.serve_log(lab.netns).connections(dport=22)
    tcp_probe(a.netns, CLOUD_IP, 22, timeout=NEGATIVE_TIMEOUT)
    arrived["A router -> cloud TCP 22"] = lab.serve_log(lab.netns).connections(dport=22) > ssh_before
    infra_before = lab.serve_log(infra.netns).connections(dport=22)
    tcp_probe(a.netns, infra.address, 22, timeout=NEGATIVE_TIMEOUT)
    arrived["A router -> infra TCP 22"] = lab.serve_log(infra.netns).connections(dport=22) > infra_before
    return arrived


def test_isolation_by_real_packets(hostile: Lab) -> None:
    arrived = _forbidden_probes(hostile)
    assert [label for label, got in arrived.items() if got] == []
    assert hostile.dead_daemons() == []  # every receiver was alive to log what came
    a, b = hostile.routers[A], hostile.routers[B]
    assert not ping(a.netns, b.address, timeout=NEGATIVE_TIMEOUT)
    assert hostile.infra is not None
    assert not ping(a.netns, hostile.infra.address, timeout=NEGATIVE_TIMEOUT)
    # ...while A's own allowed traffic still flows.
    assert udp_probe(a.host_netns or "", CLOUD_IP, 5060)


def test_a_packet_with_another_tenants_source_is_dropped(hostile: Lab) -> None:
    a, b = hostile.routers[A], hostile.routers[B]
    cloud_log = hostile.serve_log(hostile.netns)
    own, forged, legit = nonce("own"), nonce("forged"), nonce("legit")
    # Same code path (IP_TRANSPARENT, explicit source), A's own address: accepted.
    assert udp_probe(a.netns, CLOUD_IP, 5060, payload=own, src=a.address, spoof=True)
    # B may send to SIP, so the firewall would let B's address in: the forged packet can only
    # be stopped by WireGuard's cryptokey routing (B's address is not in A's AllowedIPs).
    assert udp_probe(b.netns, CLOUD_IP, 5060, payload=legit)
    udp_probe(a.netns, CLOUD_IP, 5060, payload=forged, src=b.address, spoof=True,
              timeout=NEGATIVE_TIMEOUT)
    assert cloud_log.received(own, src=a.address) and cloud_log.received(legit, src=b.address)
    assert not cloud_log.received(forged)


def test_control_without_the_firewall_the_same_probes_arrive(hostile: Lab) -> None:
    """Proves the probes can see a leak: drop the engine's table by hand, probe, re-converge."""
    Runner(hostile.netns).run(["nft", "delete", "table", "inet", "tunnelctl"])
    try:
        arrived = _forbidden_probes(hostile)
        # Spoofing stays impossible without any firewall: that one is WireGuard's job.
        forged = nonce("forged")
        udp_probe(hostile.routers[A].netns, CLOUD_IP, 5060, payload=forged,
                  src=hostile.routers[B].address, spoof=True, timeout=NEGATIVE_TIMEOUT)
        assert not hostile.serve_log(hostile.netns).received(forged)
    finally:
        repaired = converge(hostile)
    assert [label for label, got in arrived.items() if not got] == []
    assert not repaired.plan.empty  # the hand-made drift was seen and repaired
    assert [label for label, got in _forbidden_probes(hostile).items() if got] == []


def test_a_ping_flow_loses_nothing_while_200_tenants_come_and_go(cloud: Lab,
                                                                  tmp_path: Path) -> None:
    big = tmp_path / "repo"
    shutil.copytree(TENANTS, big)
    added = add_generated_tunnels(big, 200)
    assert load_repo(big).problems == ()
    host = cloud.routers[A].host_netns
    assert host is not None
    flow = cloud.flow(host, CLOUD_IP, interval=0.02)
    flow.wait_ready(timeout=10)
    time.sleep(0.3)
    grow = converge(cloud, big)
    time.sleep(0.3)
    shrink = converge(cloud, TENANTS)
    time.sleep(0.3)
    result = flow.stop()
    print(f"\nflow {result.sent} sent, {result.received} received in {result.seconds}s; "
          f"add 200: {grow.timings['total']:.2f}s, remove 200: {shrink.timings['total']:.2f}s")
    assert len(grow.plan.of(AddPeer)) == len(added) == 200
    assert len(shrink.plan.of(RemovePeer)) == 200
    assert result.sent >= 30 and result.lost == ()
    assert cloud.wait_handshake(A, timeout=1)
