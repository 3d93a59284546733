"""IPv6 inside tunnels, the repo side: subnet6/lans6 against the gateway (pool6, its own block,
reserved6, routed_ranges6, a gateway without IPv6) and against each other (the overlap sweep
that holds IPv4 and IPv6 claims together), each finding at the offending key."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from ipaddress import IPv4Network, IPv6Network

from hypothesis import given, settings
from hypothesis import strategies as st
from repo_kit import GATEWAY_YAML, TODAY, at, load, one, tunnel_yaml

from reconciler.repo.crossfile import conflict_partner

A, B = "acme/hq.yaml", "bluebird/main.yaml"
V6 = ("address6: fd42:4242:1::1/48\npool6: fd42:4242:1::/48\n"
      "reserved6: [fd42:4242:1:ff00::/56]\n"
      "routed_ranges6: [fd42:4242:1:fe::/64, fd42:4242:2::/64]\n")
DUAL = GATEWAY_YAML + V6


def v6(subnet6: str | None = None, lans6: tuple[str, ...] = (), extra: str = "") -> str:
    """Keys after tunnel_yaml's: line 7 subnet6 (when given), then lans6: and one per line."""
    text = f"subnet6: {subnet6}\n" if subnet6 else ""
    if lans6:
        text += "lans6:\n" + "".join(f"  - {lan}\n" for lan in lans6)
    return text + extra


def tun(org: str, name: str, subnet: str, subnet6: str | None = None,
        lans6: tuple[str, ...] = (), extra: str = "") -> str:
    return tunnel_yaml(org, name, subnet, extra=v6(subnet6, lans6, extra))


def test_a_dual_stack_repo_with_distinct_prefixes_is_clean() -> None:
    state = load({A: tun("acme", "hq", "10.20.0.4/30", "fd42:4242:1:1::/64", ("fd00:1::/48",)),
                  B: tun("bluebird", "main", "10.20.0.8/30", "fd42:4242:1:2::/64"),
                  "carrot/v4.yaml": tun("carrot", "v4", "10.20.0.12/30")},
                 gateway=DUAL)
    assert state.problems == ()
    assert len(state.tunnels) == 3


def test_ipv6_keys_on_a_gateway_without_ipv6_are_refused_at_each_key() -> None:
    state = load({A: tun("acme", "hq", "10.20.0.4/30", "fd42:4242:1:1::/64",
                         ("fd00:1::/48", "fd00:2::/48"))})
    found = {(p.line, p.col): p.message for p in at(state, A)}
    assert set(found) == {(7, 10), (9, 3)}  # the lans6 value: its block list
    assert "subnet6 fd42:4242:1:1::/64 needs IPv6" in found[7, 10]
    for message in found.values():
        assert "gateway cloud-1 has none (gateway.yaml declares no address6/pool6)" in message
    assert "remove lans6" in found[9, 3]


def test_subnet6_must_be_one_allocation_inside_pool6_outside_the_gateways_blocks() -> None:
    cases = {
        "fd42:4242:1:100::/56": "is a /56; every tunnel gets a /64 from pool6 fd42:4242:1::/48",
        "fd42:4242:9:5::/64": "is outside pool6 fd42:4242:1::/48 of gateway cloud-1",
        "fd42:4242:1::/64": "overlaps the gateway's own block fd42:4242:1::/64 (it holds the "
                            "cloud address fd42:4242:1::1)",
        "fd42:4242:1:ff05::/64": "overlaps the reserved infrastructure range "
                                 "fd42:4242:1:ff00::/56 (gateway.yaml)",
        "fd42:4242:1:fe::/64": "overlaps the cloud service range fd42:4242:1:fe::/64",
    }
    for subnet6, expected in cases.items():
        p = one(load({A: tun("acme", "hq", "10.20.0.4/30", subnet6)}, gateway=DUAL), A)
        assert (p.line, p.col) == (7, 10), subnet6
        assert f"subnet6 {subnet6} {expected}" in p.message


def test_lans6_must_not_cover_the_pool_the_gateway_or_cloud_ranges() -> None:
    cases = {
        "fd42:4242:1:77::/64": "the IPv6 tunnel pool fd42:4242:1::/48",
        "fd42:4242::/32": "the IPv6 tunnel pool fd42:4242:1::/48",
        "fd42:4242:2::/80": "cloud service range fd42:4242:2::/64 (gateway.yaml)",
    }
    for lan, expected in cases.items():
        state = load({A: tun("acme", "hq", "10.20.0.4/30", "fd42:4242:1:1::/64",
                             ("fd00:1::/48", lan))}, gateway=DUAL)
        p = one(state, A)
        assert (p.line, p.col) == (10, 5), lan  # the second lans6 item
        assert f"LAN {lan} overlaps {expected}" in p.message


def test_the_same_subnet6_in_two_orgs_is_reported_at_both_files_naming_the_other() -> None:
    state = load({A: tun("acme", "hq", "10.20.0.4/30", "fd42:4242:1:5::/64"),
                  B: tun("bluebird", "main", "10.20.0.8/30", "fd42:4242:1:5::/64")},
                 gateway=DUAL)
    pa, pb = one(state, A), one(state, B)
    assert (pa.line, pa.col) == (7, 10) and (pb.line, pb.col) == (7, 10)
    assert (f"subnet6 fd42:4242:1:5::/64 uses the same addresses as subnet6 "
            f"fd42:4242:1:5::/64 of {B}:7 (bluebird/main)") in pa.message
    assert conflict_partner(pa.message) == B and conflict_partner(pb.message) == A
    assert state.broken_orgs == {"acme", "bluebird"}


def test_overlapping_lans6_of_two_tunnels_name_each_others_line() -> None:
    state = load({A: tun("acme", "hq", "10.20.0.4/30", lans6=("fd00:1::/48",)),
                  B: tun("bluebird", "main", "10.20.0.8/30", "fd42:4242:1:2::/64",
                         ("fd00:9::/48", "fd00:1:0:2::/64"))}, gateway=DUAL)
    pa, pb = one(state, A), one(state, B)
    assert (pa.line, pb.line) == (8, 10)
    assert f"LAN fd00:1::/48 overlaps LAN fd00:1:0:2::/64 of {B}:10 (bluebird/main)" in pa.message
    assert f"overlaps LAN fd00:1::/48 of {A}:8 (acme/hq)" in pb.message


def test_a_revoked_tunnel_holds_its_subnet6_for_thirty_days_but_not_its_lans6() -> None:
    def state_with(days_ago: int):  # type: ignore[no-untyped-def]
        revoked = (TODAY - timedelta(days=days_ago)).isoformat()
        return load({A: tun("acme", "hq", "10.20.0.4/30", "fd42:4242:1:5::/64", ("fd00:1::/48",),
                            extra=f"status: revoked\nrevoked_at: {revoked}\n"),
                     B: tun("bluebird", "main", "10.20.0.8/30", "fd42:4242:1:5::/64",
                            ("fd00:1::/48",))}, gateway=DUAL)
    young = state_with(29)
    pb = one(young, B)
    assert pb.line == 7 and "its subnet stays reserved until 2026-06-16" in pb.message
    assert at(young, A)
    assert state_with(30).problems == ()


def test_ipv4_and_ipv6_claims_never_meet_in_the_sweep() -> None:
    # ::a14:4/126 has the integers of 10.20.0.4/30; outside pool6, but no overlap with A.
    state = load({A: tun("acme", "hq", "10.20.0.4/30"),
                  B: tun("bluebird", "main", "10.20.0.8/30", "::a14:4/126")}, gateway=DUAL)
    assert at(state, A) == []
    assert [p.message.split(";")[0] for p in at(state, B)] == [
        "subnet6 ::a14:4/126 is a /126"]


# ---- the mixed sweep against brute force ------------------------------------------------------

lan4 = st.builds(lambda start, plen: IPv4Network((0xC0A80000 + (start << 6), plen), strict=False),
                 st.integers(0, 63), st.integers(22, 27))
lan6 = st.builds(lambda start, plen: IPv6Network(((0xFD00 << 112) + (start << 96), plen),
                                                 strict=False),
                 st.integers(0, 63), st.integers(22, 28))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(lan4, max_size=2), st.lists(lan6, max_size=2),
                          st.integers(0, 3)), min_size=2, max_size=6))
def test_every_file_in_a_mixed_overlap_gets_a_problem(
        tunnels: list[tuple[list[IPv4Network], list[IPv6Network], int]]) -> None:
    files = {f"o{i}/t.yaml": tun(f"o{i}", "t", f"10.20.{i}.4/30", f"fd42:4242:1:{s + 1}::/64",
                                 tuple(str(n) for n in l6)) .replace(
                                     "lans: []", f"lans: [{', '.join(map(str, l4))}]")
             for i, (l4, l6, s) in enumerate(tunnels)}
    state = load(files, gateway=DUAL)

    def own_ok(nets: Sequence[IPv4Network | IPv6Network]) -> bool:
        return all(a.version != b.version or not a.overlaps(b)
                   for j, a in enumerate(nets) for b in nets[:j])

    ok = [own_ok([*l4, *l6]) for l4, l6, _ in tunnels]
    expected = set()
    for i, (l4, l6, s) in enumerate(tunnels):
        for j, (m4, m6, t) in enumerate(tunnels):
            clash = (s == t or any(a.overlaps(b) for a in l4 for b in m4)
                     or any(a.overlaps(b) for a in l6 for b in m6))
            if i != j and ok[i] and ok[j] and clash:
                expected.add(f"o{i}/t.yaml")
    flagged = {p.file for p in state.problems if conflict_partner(p.message)}
    assert flagged == expected


def test_an_ipv6_endpoint_inside_pool6_or_a_customers_lans6_would_loop_the_tunnel() -> None:
    inside = DUAL.replace("endpoint: 203.0.113.10:51821", "endpoint: '[fd42:4242:1::99]:51821'")
    p = one(load({}, gateway=inside), "gateway.yaml")
    assert "fd42:4242:1::/48 contains the public endpoint fd42:4242:1::99" in p.message
    assert p.line == inside.splitlines().index("pool6: fd42:4242:1::/48") + 1
    outside = DUAL.replace("endpoint: 203.0.113.10:51821", "endpoint: '[fd00:1::9]:51821'")
    state = load({A: tun("acme", "hq", "10.20.0.4/30", lans6=("fd00:1::/48",))}, gateway=outside)
    assert "LAN fd00:1::/48 overlaps the gateway's public endpoint fd00:1::9" in \
        one(state, A).message


def test_the_scaffolded_gateway_offers_ipv6_as_commented_keys_that_load_when_uncommented() -> None:
    from reconciler.operator.scaffold import GatewaySpec, Pin, render_scaffold
    from reconciler.repo.state import SourceFile, load_files

    text = render_scaffold(GatewaySpec("cloud-2", "vpn.example:51821"),
                           Pin("o/t", "0123456789abcdef" * 2 + "01234567")).files["gateway.yaml"]
    plain = load_files([SourceFile("gateway.yaml", text.encode())])
    assert plain.problems == () and not plain.gateways["cloud-2"].dual_stack
    enabled = text.replace("# address6:", "address6:").replace("# pool6:", "pool6:")
    state = load_files([SourceFile("gateway.yaml", enabled.encode())])
    assert state.problems == () and state.gateways["cloud-2"].dual_stack
