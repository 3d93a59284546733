"""Plan stage: golden cases and hypothesis properties. Pure, no root."""

from __future__ import annotations

import json
import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.engine.hoststate import (
    ROUTE_PROTO,
    ConfigFile,
    Firewall,
    HostState,
    InterfaceConfig,
    ObservedState,
    Peer,
    PeerStatus,
    Route,
    canonical_ips,
)
from reconciler.engine.parsers import firewall_from_elements
from reconciler.engine.plan import (
    AddPeer,
    AddRoute,
    DeleteRoute,
    Plan,
    RemovePeer,
    ReplaceFirewall,
    SetInterface,
    UpdatePeer,
    WriteConfig,
    plan,
)
from reconciler.engine.wgkeys import keypair

KEYS = sorted(keypair()[1] for _ in range(8))
A, B, C = KEYS[:3]
IFACE = InterfaceConfig("wg1", 51821, KEYS[7], "10.20.0.1/16", 1420, True)
FW1 = firewall_from_elements({("chain", "input", "filter", "input", -5, "accept"),
                              ("rule", "input", 0, "aaaa")}, text="table inet tunnelctl {}")
FW2 = firewall_from_elements(FW1.elements | {("elem", "tenant_profiles", "10.20.0.6/32",
                                              "jump svc_sip")}, text="table inet tunnelctl {}")


def peer(key: str, *ips: str, psk: str | None = "d1", keepalive: int = 25,
         owner: str | None = None) -> Peer:
    return Peer(key, canonical_ips(ips), psk, keepalive, owner=owner)


def state(peers: list[Peer], routes: frozenset[Route] | set[Route] = frozenset(),
          fw: Firewall | None = FW1, iface: InterfaceConfig | None = IFACE,
          config: ConfigFile | None = None) -> HostState:
    return HostState(iface, {p.public_key: p for p in peers}, frozenset(routes), fw, config)


def test_identical_states_plan_nothing() -> None:
    s = state([peer(A, "10.20.0.6/32", "192.168.10.0/24")], {Route("192.168.10.0/24", "wg1")})
    p = plan(s, s)
    assert p.empty and len(p) == 0
    assert p.render_text() == "No changes. The host matches the desired state."
    assert p.summary()["total"] == {"add": 0, "change": 0, "remove": 0}


def test_owner_and_live_status_are_not_drift() -> None:
    desired = state([peer(A, "10.20.0.6/32", owner="acme/hq")])
    observed = ObservedState(IFACE, {A: peer(A, "10.20.0.6/32")}, frozenset(), FW1,
                             peer_status={A: PeerStatus(A, "198.51.100.7:4500", 1_700_000_000,
                                                        10, 20)})
    assert plan(desired, observed).empty
    roamed = replace(observed, peer_status={A: PeerStatus(A, "203.0.113.9:1", 1_700_000_100,
                                                           99, 99)})
    assert plan(desired, roamed).empty


def test_golden_mixed_plan_text_and_json() -> None:
    desired = state(
        [peer(A, "10.20.0.6/32", "192.168.10.0/24", "192.168.11.0/24", owner="acme-voip/hq"),
         peer(C, "10.20.0.14/32", owner="carrot/clinic")],
        {Route("192.168.10.0/24", "wg1"), Route("192.168.11.0/24", "wg1")}, fw=FW2)
    observed = state(
        [peer(A, "10.20.0.6/32", "192.168.10.0/24"), peer(B, "10.20.0.10/32", psk=None)],
        {Route("192.168.10.0/24", "wg1"), Route("192.168.20.0/24", "wg1"),
         Route("192.168.99.0/24", "wg1", proto=4)})
    p = plan(desired, observed)
    kinds = [type(c) for c in p]
    assert kinds == [ReplaceFirewall, UpdatePeer, AddPeer, RemovePeer, AddRoute, DeleteRoute]
    upd = p.of(UpdatePeer)[0]
    assert upd.fields() == (("allowed_ips", ("10.20.0.6/32", "192.168.10.0/24"),
                             ("10.20.0.6/32", "192.168.10.0/24", "192.168.11.0/24")),)
    assert p.of(DeleteRoute)[0].route == Route("192.168.20.0/24", "wg1")  # 99.0/24 is foreign
    text = p.render_text().splitlines()
    assert text[0].startswith("~ firewall inet tunnelctl (replaced atomically: fp ")
    assert text[1] == (f"~ peer acme-voip/hq ({A[:8]}…) allowed_ips: [10.20.0.6/32, "
                       "192.168.10.0/24] -> [10.20.0.6/32, 192.168.10.0/24, 192.168.11.0/24]")
    assert text[2] == (f"+ peer carrot/clinic ({C[:8]}…) allowed_ips=[10.20.0.14/32] psk=d1 "
                       "keepalive=25")
    assert text[3] == f"- peer ({B[:8]}…) allowed_ips=[10.20.0.10/32] psk=(none) keepalive=25"
    assert text[4] == "+ route 192.168.11.0/24 dev wg1 proto 252"
    assert text[5] == "- route 192.168.20.0/24 dev wg1 proto 252"
    assert text[-1] == "Plan: 2 to add, 2 to change, 2 to remove."
    summary = p.summary()
    assert summary["peers"] == {"add": 1, "change": 1, "remove": 1}
    assert summary["routes"] == {"add": 1, "change": 0, "remove": 1}
    assert summary["firewall"] == {"add": 0, "change": 1, "remove": 0}
    js = p.to_json()
    json.dumps(js)  # serialisable
    assert js["changes"][1] == {"kind": "peer", "action": "change", "key": A, "owner": "acme-voip/hq",
                                "fields": {"allowed_ips": {
                                    "old": ["10.20.0.6/32", "192.168.10.0/24"],
                                    "new": ["10.20.0.6/32", "192.168.10.0/24", "192.168.11.0/24"]}}}
    assert js["changes"][2]["psk_digest"] == "d1" and js["changes"][2]["owner"] == "carrot/clinic"
    assert js["changes"][4]["key"] == ["main", "192.168.11.0/24", "wg1"]


def test_interface_from_fresh_and_field_changes() -> None:
    fresh = InterfaceConfig("wg1", 40000, None, None, 1420, False)
    p = plan(state([]), state([], iface=fresh))
    (c,) = p.changes
    assert isinstance(c, SetInterface)
    assert [f[0] for f in c.fields()] == ["listen_port", "public_key", "address", "up"]
    assert p.render_text().splitlines()[0].startswith("~ interface wg1 listen_port: 40000 -> 51821")


def test_firewall_absent_flushed_and_config_file() -> None:
    p = plan(state([], fw=FW1, config=ConfigFile("/etc/wireguard/wg1.conf", "abc")),
             state([], fw=None, config=ConfigFile("/etc/wireguard/wg1.conf", None)))
    assert [type(c) for c in p] == [ReplaceFirewall, WriteConfig]
    assert p.summary()["total"]["add"] == 2
    assert p.to_json()["changes"][1]["new_digest"] == "abc"
    flushed = firewall_from_elements({e for e in FW1.elements if e[0] != "rule"})
    assert plan(state([], fw=FW1), state([], fw=flushed)).of(ReplaceFirewall)
    # A desired state that does not manage the config file never plans one.
    assert plan(state([]), state([], config=ConfigFile("/x", "zzz"))).empty


def test_psk_rotation_and_removal_are_field_changes_without_keys() -> None:
    p = plan(state([peer(A, "10.20.0.6/32", psk="new")]), state([peer(A, "10.20.0.6/32", psk="old")]))
    (c,) = p.changes
    assert isinstance(c, UpdatePeer) and c.fields() == (("psk_digest", "old", "new"),)
    p2 = plan(state([peer(A, "10.20.0.6/32", psk=None, keepalive=0)]),
              state([peer(A, "10.20.0.6/32")]))
    assert p2.of(UpdatePeer)[0].fields() == (("psk_digest", "d1", None), ("keepalive", 25, 0))
    assert "keepalive: 25 -> off" in p2.render_text()


# ----------------------------------------------------------------------- properties

CIDRS = ["10.20.0.6/32", "10.20.0.10/32", "192.168.10.0/24", "192.168.11.0/24", "172.16.0.0/16"]
ROUTE_POOL = [Route(d, "wg1", t, ROUTE_PROTO) for d in CIDRS[2:] for t in ("main", "100")]
FOREIGN = [Route(d, "wg1", "main", p) for d in CIDRS[2:] for p in (3, 4)]

peers_st = st.dictionaries(
    st.sampled_from(KEYS[:6]),
    st.tuples(st.lists(st.sampled_from(CIDRS), max_size=3), st.sampled_from([None, "d1", "d2"]),
              st.sampled_from([0, 25])),
    max_size=6)
iface_st = st.builds(InterfaceConfig, st.just("wg1"), st.sampled_from([51820, 51821]),
                     st.sampled_from([None, KEYS[6], KEYS[7]]),
                     st.sampled_from([None, "10.20.0.1/16", "10.20.0.1/16,10.30.0.1/24"]),
                     st.sampled_from([1420, 1280]), st.booleans())
config_st = st.sampled_from([None, ConfigFile("/c", None), ConfigFile("/c", "x"), ConfigFile("/c", "y")])


def host_state(desired: bool) -> st.SearchStrategy[HostState]:
    routes = st.sets(st.sampled_from(ROUTE_POOL if desired else ROUTE_POOL + FOREIGN))
    return st.builds(
        lambda i, ps, rs, fw, cf: HostState(
            i, {k: Peer(k, canonical_ips(ips), psk, ka, owner="o/n" if desired else None)
                for k, (ips, psk, ka) in ps.items()}, frozenset(rs), fw, cf),
        iface_st, peers_st, routes, st.sampled_from([None, FW1, FW2]), config_st)


def model_apply(host: HostState, p: Plan) -> HostState:
    """An independent in-memory model of the host executing a plan."""
    iface, peers, routes = host.interface, dict(host.peers), set(host.routes)
    fw, config = host.firewall, host.config
    for c in p:
        if isinstance(c, SetInterface):
            iface = c.new
        elif isinstance(c, AddPeer):
            peers[c.peer.public_key] = c.peer
        elif isinstance(c, RemovePeer):
            del peers[c.peer.public_key]
        elif isinstance(c, UpdatePeer):
            peers[c.old.public_key] = replace(peers[c.old.public_key],
                                              **{n: v for n, _, v in c.fields()})
        elif isinstance(c, AddRoute):  # `ip route replace` takes over the same table+dst
            routes = {r for r in routes if (r.table, r.dst) != (c.route.table, c.route.dst)}
            routes.add(c.route)
        elif isinstance(c, DeleteRoute):
            routes.remove(c.route)
        elif isinstance(c, ReplaceFirewall):
            fw = c.new
        elif isinstance(c, WriteConfig):
            config = c.new
    return HostState(iface, peers, frozenset(routes), fw, config)


@settings(max_examples=300, deadline=None)
@given(host_state(desired=True))
def test_plan_against_itself_is_empty(s: HostState) -> None:
    assert plan(s, s).empty


@settings(max_examples=300, deadline=None)
@given(host_state(desired=True), host_state(desired=False))
def test_applying_the_plan_to_a_model_converges(desired: HostState, observed: HostState) -> None:
    p = plan(desired, observed)
    after = model_apply(observed, p)
    assert plan(desired, after).empty
    # Foreign routes are never deleted; only a route replace of the same prefix takes one over.
    taken = {(r.table, r.dst) for r in desired.routes}
    for r in observed.routes:
        if r.proto != ROUTE_PROTO and (r.table, r.dst) not in taken:
            assert r in after.routes
    # Peers that did not differ are not mentioned at all (their sessions survive).
    mentioned = {c.peer.public_key for c in p.of(AddPeer)} | {c.peer.public_key for c in p.of(RemovePeer)} \
        | {c.new.public_key for c in p.of(UpdatePeer)}
    for k, v in observed.peers.items():
        if desired.peers.get(k) == v:
            assert k not in mentioned


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=60, max_value=140), st.randoms(use_true_random=False))
def test_adding_to_an_empty_host_gives_the_general_plan(n: int, rnd: random.Random) -> None:
    """Above 64 peers, an empty host takes plan_peers' shortcut; below, the general loop.
    Both give every peer as an AddPeer in (owner, key) order, owners unordered in input."""
    keys = [keypair()[1] for _ in range(n)]
    owners = [f"org{rnd.randrange(10)}/t{i}" if rnd.random() < 0.9 else None for i in range(n)]
    peers = [peer(k, f"10.30.{i >> 8}.{i & 255}/32", owner=o)
             for i, (k, o) in enumerate(zip(keys, owners))]
    rnd.shuffle(peers)
    changes = plan(state(peers), state([])).of(AddPeer)
    assert [c.peer for c in changes] == sorted(peers, key=lambda p: (p.owner or "", p.public_key))
    assert all(c.owner == c.peer.owner for c in changes)
