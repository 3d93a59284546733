"""Render stage: the shipped tenants/ examples and small hand-made gateways, no root needed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from reconciler.engine.hoststate import Route
from reconciler.engine.psk import derive_psk, psk_digest
from reconciler.engine.render import (
    active_tunnels,
    render_config,
    render_firewall,
    render_host,
    render_routes,
)
from reconciler.engine.render_firewall import _merge_ports, profile_chain
from reconciler.engine.wgkeys import keypair, public_key
from reconciler.repo.model import Gateway, Tunnel
from reconciler.repo.state import load_repo

ROOT = Path(__file__).parent.parent
SECRET = bytes(range(32))
GW_PRIV = "EK0jUTd3Ge0AE4qXgHX01pRn/jhcQx/JMdQlbE3Xums="  # demo-only key (reconciler/lab/data)


def example() -> tuple[Gateway, list[Tunnel]]:
    repo = load_repo(ROOT / "tenants")
    assert repo.ok, repo.problems
    gw = repo.gateways["cloud-1"]
    return gw, list(repo.tunnels)


def gateway(**over: Any) -> Gateway:
    data: dict[str, Any] = {
        "name": "gw", "interface": "wg1", "address": "10.20.0.1/16", "pool": "10.20.0.0/16",
        "endpoint": "203.0.113.10:51821",
        "services": {"sip": {"proto": "udp", "ports": "5060,5080"},
                     "rtp": {"proto": "udp", "ports": "10000-20000"},
                     "sipalt": {"proto": "udp", "ports": "5070-5090"},
                     "prov": {"proto": "tcp", "ports": 443}},
        "default_services": ["sip", "rtp"]}
    data.update(over)
    return Gateway.model_validate(data)


def tunnel(i: int, **over: Any) -> Tunnel:
    data: dict[str, Any] = {"org": f"org{i}", "name": "main", "gateway": "gw",
                            "public_key": keypair()[1], "subnet": f"10.20.{i}.4/30"}
    data.update(over)
    return Tunnel.model_validate(data)


def test_cloud_keepalive_only_from_the_explicit_cloud_side_field() -> None:
    gw = gateway()
    plain = tunnel(1, persistent_keepalive=25)
    asked = tunnel(2, persistent_keepalive=0, cloud_keepalive=15)
    state, _ = render_host(gw, [plain, asked], interface=None, private_key=GW_PRIV,
                           host_secret=SECRET, config_path=None)
    assert state.peers[plain.public_key].keepalive == 0
    assert state.peers[asked.public_key].keepalive == 15


def test_example_peers_are_active_tunnels_with_derived_psk() -> None:
    gw, tunnels = example()
    state, secrets = render_host(gw, tunnels, interface=None, private_key=GW_PRIV,
                                 host_secret=SECRET, config_path=None)
    owners = {p.owner for p in state.peers.values()}
    assert owners == {"acme-voip/hq", "bluebird-telecom/main", "carrot-dental/clinic"}
    hq = next(p for p in state.peers.values() if p.owner == "acme-voip/hq")
    assert hq.allowed_ips == ("10.20.0.6/32", "192.168.10.0/24")
    # The customer side keeps its NAT open (persistent_keepalive: 25 in its file); the cloud's
    # peer sends none unless the file asks for one with cloud_keepalive.
    assert hq.keepalive == 0
    psk = derive_psk(SECRET, "acme-voip", "hq", 0)
    assert hq.psk_digest == psk_digest(psk)
    assert secrets.psk(hq.public_key) == psk
    assert psk not in repr(secrets) and GW_PRIV not in repr(secrets)
    assert state.interface is not None
    assert state.interface.public_key == public_key(GW_PRIV) == gw.public_key
    assert (state.interface.name, state.interface.listen_port, state.interface.address,
            state.interface.mtu, state.interface.up) == ("wg1", 51821, "10.20.0.1/16", 1420, True)


def test_example_routes_are_lans_only() -> None:
    gw, tunnels = example()
    routes = render_routes(gw, active_tunnels(gw, tunnels), "wg1")
    # Customer /32s sit inside 10.20.0.1/16, whose on-link route already covers them.
    assert routes == {Route("192.168.10.0/24", "wg1"), Route("192.168.30.0/24", "wg1")}


def test_customer_outside_the_interface_prefix_gets_a_host_route() -> None:
    gw = gateway(address="10.20.0.1/24")
    t = tunnel(5)  # 10.20.5.6 is outside 10.20.0.0/24
    assert render_routes(gw, [t], "wg9") == {Route("10.20.5.6/32", "wg9")}


def test_example_firewall_text() -> None:
    gw, tunnels = example()
    fw = render_firewall(gw, active_tunnels(gw, tunnels), "wg1")
    text = fw.text
    assert text.startswith("table inet tunnelctl {")
    assert f"fp {fw.fingerprint}" in text
    assert 'iifname != "wg1" accept' in text
    assert "ct state established,related accept" in text
    assert "ip daddr 10.20.0.1 icmp type echo-request accept" in text
    # Tenants' own /32s in a hash map, LANs in the interval map: two lookups, same verdicts.
    assert "ip daddr 10.20.0.1 ip saddr vmap @tenant_hosts" in text
    assert "ip daddr 10.20.0.1 ip saddr vmap @tenant_profiles" in text
    assert re.search(r"chain svc_rtp_sip \{\n\s+udp dport \{ 5060, 5080, 10000-20000 \} accept", text)
    assert re.search(r"chain svc_sip \{\n\s+udp dport \{ 5060, 5080 \} accept", text)
    assert "\t10.20.0.10 : jump svc_sip" in text  # bluebird has only sip
    assert "192.168.10.0/24 : jump svc_rtp_sip" in text
    assert "10.20.0.18" not in text  # carrot-dental/branch is disabled
    assert 'iifname "wg1" counter drop' in text and 'oifname "wg1" counter drop' in text
    assert "flush" not in text  # never a flush: the whole table is replaced atomically
    # One set of elements, not one rule per tenant; every rule is compared by its body.
    rules = [ln for ln in text.splitlines() if ln.startswith("\t\t") and " comment " in ln]
    assert len(rules) == fw.counts()["rule"] == 11
    assert fw.counts()["elem"] == 5


def test_firewall_is_one_map_not_rules_per_tenant() -> None:
    gw = gateway()
    tunnels = [tunnel(i) for i in range(1, 200)]
    fw = render_firewall(gw, tunnels, "wg1")
    assert fw.counts()["rule"] == 10  # independent of the tenant count
    assert fw.counts()["elem"] == 199


def test_profiles_merge_overlapping_ports_and_protocols() -> None:
    gw = gateway()
    t = tunnel(1, services=["sip", "sipalt", "prov"])
    fw = render_firewall(gw, [t], "wg1")
    chain = profile_chain(("prov", "sip", "sipalt"))
    assert f"chain {chain} {{" in fw.text
    assert "tcp dport { 443 } accept" in fw.text
    assert "udp dport { 5060, 5070-5090 } accept" in fw.text  # 5080 lies inside 5070-5090
    assert _merge_ports([]) == ()


def test_tenant_without_services_gets_no_map_entry() -> None:
    gw = gateway()
    fw = render_firewall(gw, [tunnel(1, services=[])], "wg1")
    assert fw.counts().get("elem", 0) == 0
    assert "elements" not in fw.text


def test_routed_ranges_allow_forwarding_to_them_only() -> None:
    gw = gateway(routed_ranges=["172.31.0.0/24"])
    fw = render_firewall(gw, [tunnel(1)], "wg1")
    assert "set routed_ranges {" in fw.text
    assert 'iifname "wg1" ip daddr @routed_ranges ip saddr vmap @tenant_profiles' in fw.text
    assert ("elem", "routed_ranges", "172.31.0.0/24", "") in fw.elements


def test_config_file_has_keys_and_no_saveconfig(tmp_path: Path) -> None:
    gw, tunnels = example()
    state, secrets = render_host(gw, tunnels, interface="wgx", private_key=GW_PRIV,
                                 host_secret=SECRET, config_path=tmp_path / "wgx.conf")
    assert state.interface is not None
    text = render_config(state.interface, state.peers, secrets)
    assert text.count("[Peer]") == 3
    assert f"PrivateKey = {GW_PRIV}" in text
    assert "ListenPort = 51821" in text and "Address = 10.20.0.1/16" in text
    for key, peer in state.peers.items():
        assert f"PublicKey = {key}" in text
        assert f"PresharedKey = {secrets.psk(key)}" in text
        assert f"AllowedIPs = {', '.join(peer.allowed_ips)}" in text
    assert "SaveConfig" not in text and "Table" not in text
    # Rendered once for the digest and kept, hidden, for the apply step.
    assert secrets.config_text == text and GW_PRIV not in repr(secrets)
    assert state.config is not None and state.config.path == str(tmp_path / "wgx.conf")


def test_render_is_deterministic_and_rotation_changes_one_psk() -> None:
    gw = gateway()
    tunnels = [tunnel(i) for i in range(1, 6)]
    a, _ = render_host(gw, tunnels, interface=None, private_key=GW_PRIV, host_secret=SECRET,
                       config_path=Path("/x.conf"))
    b, _ = render_host(gw, list(reversed(tunnels)), interface=None, private_key=GW_PRIV,
                       host_secret=SECRET, config_path=Path("/x.conf"))
    assert a == b
    rotated = [tunnels[0].model_copy(update={"psk_rotation": 1}), *tunnels[1:]]
    c, _ = render_host(gw, rotated, interface=None, private_key=GW_PRIV, host_secret=SECRET,
                       config_path=Path("/x.conf"))
    diff = [k for k in a.peers if a.peers[k] != c.peers[k]]
    assert diff == [tunnels[0].public_key]
    assert a.config != c.config and a.firewall == c.firewall
