"""Parsers against real output captured by tests/fixtures/capture.py (wireguard-go, iproute2 6.1,
nftables 1.0.6). The keys in the fixtures are published test constants, not secrets."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from reconciler.engine.hoststate import ROUTE_PROTO, Firewall, HostState, Route, canonical_ips
from reconciler.engine.parsers import (
    ParseError,
    nft_table_absent,
    parse_ip_addr,
    parse_nft_table,
    parse_routes,
    parse_wg_dump,
    parse_wg_dump_secrets,
)
from reconciler.engine.plan import ReplaceFirewall, plan
from reconciler.engine.psk import psk_digest
from reconciler.engine.render import active_tunnels, render_firewall
from reconciler.engine.wgkeys import public_key
from reconciler.repo.state import load_repo

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def const_key(byte: int) -> str:
    return base64.b64encode(bytes([byte]) * 32).decode()


ROUTER_PUB = public_key(const_key(2))
PEER2_PUB = public_key(const_key(3))
PEER3_PUB = public_key(const_key(4))
PSK = const_key(5)


def test_fresh_interface_has_no_key_and_no_peers() -> None:
    dump = parse_wg_dump(fixture("wg_dump_fresh.txt"), psk_digest)
    assert dump.interface.public_key is None
    assert not dump.interface.has_private_key
    assert dump.interface.listen_port > 0  # wireguard-go picks a random port
    assert dump.peers == {} and dump.status == {}


def test_dump_with_peers_psk_keepalive_and_empty_allowed_ips() -> None:
    dump = parse_wg_dump(fixture("wg_dump_peers.txt"), psk_digest)
    assert dump.interface.public_key == public_key(const_key(1))
    assert dump.interface.listen_port == 51821
    assert dump.interface.fwmark == 0
    assert set(dump.peers) == {ROUTER_PUB, PEER2_PUB, PEER3_PUB}
    p1 = dump.peers[ROUTER_PUB]
    # Captured in the order given to wg (LAN first); parsed into canonical address order.
    assert p1.allowed_ips == ("10.20.0.6/32", "192.168.10.0/24")
    assert p1.psk_digest == psk_digest(PSK)
    assert p1.keepalive == 25
    p2 = dump.peers[PEER2_PUB]
    assert (p2.allowed_ips, p2.psk_digest, p2.keepalive) == (("10.20.0.10/32",), None, 0)
    assert dump.peers[PEER3_PUB].allowed_ips == ()
    assert dump.status[ROUTER_PUB].latest_handshake == 0
    assert dump.status[ROUTER_PUB].endpoint is None


def test_no_preshared_key_survives_parsing() -> None:
    dump = parse_wg_dump(fixture("wg_dump_peers.txt"), psk_digest)
    assert PSK not in repr(dump)


def test_handshake_fills_status_but_not_the_peer() -> None:
    before = parse_wg_dump(fixture("wg_dump_peers.txt"), psk_digest)
    after = parse_wg_dump(fixture("wg_dump_handshake.txt"), psk_digest)
    st = after.status[ROUTER_PUB]
    assert st.endpoint is not None and st.endpoint.startswith("198.51.100.2:")
    assert st.latest_handshake > 1_600_000_000
    assert st.rx_bytes > 0 and st.tx_bytes > 0
    # A live handshake and a learned endpoint are not configuration: peers compare equal.
    assert after.peers == before.peers


def test_dump_secrets_for_the_snapshot() -> None:
    priv, psks = parse_wg_dump_secrets(fixture("wg_dump_peers.txt"))
    assert priv is not None and public_key(priv) == public_key(const_key(1))
    assert psks == {ROUTER_PUB: PSK}
    assert parse_wg_dump_secrets(fixture("wg_dump_fresh.txt")) == (None, {})


@pytest.mark.parametrize("text", ["", "a\tb\tc\n", "x\ty\t1\toff\nonly\tthree\tfields\n"])
def test_malformed_dump_is_an_error(text: str) -> None:
    with pytest.raises(ParseError):
        parse_wg_dump(text, psk_digest)


def test_ip_addr_fresh_and_up() -> None:
    fresh = parse_ip_addr(fixture("ip_addr_fresh.json"))
    assert fresh is not None
    assert (fresh.name, fresh.mtu, fresh.up, fresh.addresses) == ("wg1", 1420, False, ())
    up = parse_ip_addr(fixture("ip_addr_up.json"))
    assert up is not None
    # The kernel's IPv6 link-local address is not ours and is ignored.
    assert (up.mtu, up.up, up.addresses) == (1412, True, ("10.20.0.1/16",))
    assert parse_ip_addr("[]") is None


def test_routes_all_tables_keeps_unicast_only() -> None:
    routes = parse_routes(fixture("ip_route_all.json"), dev="wg1")
    assert Route("192.168.10.0/24", "wg1", "main", ROUTE_PROTO) in routes
    assert Route("172.16.5.0/24", "wg1", "100", ROUTE_PROTO) in routes
    assert Route("192.168.99.0/24", "wg1", "main", 4) in routes  # foreign: proto static
    assert Route("10.20.0.0/16", "wg1", "main", 2) in routes  # kernel on-link route
    assert not any(r.table == "local" for r in routes)  # local/broadcast entries skipped
    assert Route("fe80::/64", "wg1", "main", 2) in routes


def test_routes_filtered_output_omits_the_filtered_keys() -> None:
    # `ip` leaves out dev and protocol when they were filters: the caller's values fill in.
    routes = parse_routes(fixture("ip_route_ours.json"), dev="wg1", proto=ROUTE_PROTO)
    assert routes == {Route("192.168.10.0/24", "wg1"), Route("172.16.5.0/24", "wg1", "100")}
    assert parse_routes(fixture("ip_route_none.json"), dev="wg1", proto=ROUTE_PROTO) == frozenset()


def _example_firewall() -> Firewall:
    repo = load_repo(ROOT / "tenants")
    gw = repo.gateways["cloud-1"]
    return render_firewall(gw, active_tunnels(gw, repo.tunnels), "wg1")


def test_nft_table_listing_equals_the_rendered_table() -> None:
    observed = parse_nft_table(fixture("nft_table.json"))
    desired = _example_firewall()
    assert observed is not None
    assert observed == desired
    assert observed.fingerprint == desired.fingerprint
    assert desired.text == fixture("nft_table_rendered.nft")


def test_rendered_structure_matches_the_listing() -> None:
    # Chains, rule bodies and declarations from the typed table equal those nft lists back.
    observed = parse_nft_table(fixture("nft_table.json"))
    assert observed is not None
    desired = _example_firewall()
    assert {e for e in desired.elements if e[0] != "elem"} == \
        {e for e in observed.elements if e[0] != "elem"}
    rules = sorted(e for e in observed.elements if e[0] == "rule")
    assert len(rules) == 11 and all(str(e[3]).startswith("[{") for e in rules)


def test_rendered_table_observed_back_plans_no_firewall_change() -> None:
    observed = parse_nft_table(fixture("nft_table.json"))
    desired = _example_firewall()
    state = HostState(None, {}, frozenset(), desired)
    assert plan(state, HostState(None, {}, frozenset(), observed)).empty


def test_verdict_changed_by_hand_with_the_same_comment_is_drift() -> None:
    # Captured: `nft replace rule ... counter accept comment "<the same comment>"` on the
    # input chain's final drop. The comment still matches; the body does not.
    desired = _example_firewall()
    edited = parse_nft_table(fixture("nft_table_accept.json"))
    assert edited is not None and edited != desired
    assert {e for e in desired.elements ^ edited.elements} == {
        ("rule", "input", 6, '[{"counter":null},{"drop":null}]'),
        ("rule", "input", 6, '[{"counter":null},{"accept":null}]')}
    changes = plan(HostState(None, {}, frozenset(), desired),
                   HostState(None, {}, frozenset(), edited))
    assert [type(c) for c in changes] == [ReplaceFirewall]
    assert changes.of(ReplaceFirewall)[0].element_delta() is None  # loaded whole, not patched


def test_rule_order_match_and_verdict_edits_are_drift_counters_are_not() -> None:
    desired = _example_firewall()

    def rules(items: list, chain: str) -> list:  # type: ignore[type-arg]
        return [i for i in items if "rule" in i and i["rule"]["chain"] == chain]

    def swap(items: list) -> None:  # type: ignore[type-arg]
        a, b = rules(items, "input")[:2]
        i, j = items.index(a), items.index(b)
        items[i], items[j] = b, a

    def port(items: list) -> None:  # type: ignore[type-arg]
        rules(items, "svc_sip")[0]["rule"]["expr"][0]["match"]["right"]["set"].append(22)

    def iif(items: list) -> None:  # type: ignore[type-arg]
        rules(items, "forward")[0]["rule"]["expr"][0]["match"]["right"] = "wg9"

    def comment(items: list) -> None:  # type: ignore[type-arg]
        rules(items, "input")[0]["rule"]["comment"] = "tc:0123456789"

    def counted(items: list) -> None:  # type: ignore[type-arg]
        rules(items, "input")[-1]["rule"]["expr"][0]["counter"] = {"packets": 7, "bytes": 420}

    for edit in (swap, port, iif):
        assert _tampered(edit) != desired, edit.__name__
    for edit in (comment, counted):  # neither is a rule's behaviour
        assert _tampered(edit) == desired, edit.__name__


def test_flushed_table_is_detected() -> None:
    flushed = parse_nft_table(fixture("nft_table_flushed.json"))
    assert flushed is not None
    assert flushed.counts().get("rule", 0) == 0
    assert flushed.counts()["chain"] == 4
    assert flushed != _example_firewall()


def _tampered(edit) -> object:  # type: ignore[no-untyped-def]
    data = json.loads(fixture("nft_table.json"))
    edit(data["nftables"])
    return parse_nft_table(json.dumps(data))


def test_deleted_rule_changed_element_and_foreign_rule_are_detected() -> None:
    desired = _example_firewall()

    def drop_rule(items: list) -> None:  # type: ignore[type-arg]
        rules = [i for i in items if "rule" in i]
        items.remove(rules[-1])

    def change_elem(items: list) -> None:  # type: ignore[type-arg]
        m = next(i["map"] for i in items if "map" in i)
        m["elem"][0][1] = {"jump": {"target": "svc_sip"}}

    def add_rule(items: list) -> None:  # type: ignore[type-arg]
        items.append({"rule": {"family": "inet", "table": "tunnelctl", "chain": "input",
                               "handle": 99, "expr": [{"accept": None}]}})

    def policy(items: list) -> None:  # type: ignore[type-arg]
        c = next(i["chain"] for i in items if i.get("chain", {}).get("name") == "forward")
        c["policy"] = "drop"

    for edit in (drop_rule, change_elem, add_rule, policy):
        tampered = _tampered(edit)
        assert tampered is not None and tampered != desired, edit.__name__


def test_other_tables_in_the_listing_are_ignored_and_absent_is_none() -> None:
    data = json.loads(fixture("nft_table.json"))
    data["nftables"].append({"table": {"family": "ip", "name": "filter", "handle": 7}})
    data["nftables"].append({"chain": {"family": "ip", "table": "filter", "name": "INPUT",
                                       "handle": 1}})
    assert parse_nft_table(json.dumps(data)) == _example_firewall()
    assert parse_nft_table("") is None
    only_other = {"nftables": [{"table": {"family": "ip", "name": "filter", "handle": 7}}]}
    assert parse_nft_table(json.dumps(only_other)) is None


def test_canonical_ips() -> None:
    assert canonical_ips(["192.168.10.0/24", "10.20.0.6", "10.20.0.6/32", "10.1.2.3/8"]) == (
        "10.0.0.0/8", "10.20.0.6/32", "192.168.10.0/24")


def test_absent_table_is_told_apart_from_a_failure() -> None:
    assert nft_table_absent(fixture("nft_table_absent.txt"))
    assert not nft_table_absent("Error: Could not process rule: Operation not permitted")
