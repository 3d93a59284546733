"""The checkpoint holds the plan's inverse: applied over any host a killed apply can leave
(each change done or not, the firewall's transaction all or nothing), it gives back the host
before the plan, and it leaves what the plan did not touch as found (issue 13)."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from reconciler.engine import checkpoint
from reconciler.engine.hoststate import (
    TENANT_MAP,
    ConfigFile,
    Firewall,
    InterfaceConfig,
    ObservedState,
    Peer,
    Route,
    Secrets,
)
from reconciler.engine.observe import Snapshot
from reconciler.engine.plan import (
    AddPeer,
    AddRoute,
    DeleteRoute,
    Plan,
    RemovePeer,
    ReplaceFirewall,
    UpdatePeer,
    WriteConfig,
    plan,
)

IFACE = InterfaceConfig("wg9", 51820, "PUB", "10.20.0.1/16", 1420, True)
RULES = frozenset({("chain", "input", "filter", "input", 0, "drop"),
                   ("rule", "input", 0, "{}")})


def _firewall(elements: frozenset[tuple[str | int, ...]], text: str = "") -> Firewall:
    return Firewall("inet", "tunnelctl", Firewall.digest(elements), elements, text)


def _host(rng: random.Random, n: int, extra_rule: bool = False) -> ObservedState:
    """n random tenants; with extra_rule a table that differs in more than its elements."""
    peers = {}
    routes = set()
    elements = set(RULES)
    for i in rng.sample(range(3 * n), n):
        key = f"{i:042d}A="
        lan = [f"192.168.{i % 250}.0/24"] if i % 3 == 0 else []
        peers[key] = Peer(key, (f"10.20.{i // 250}.{i % 250 + 2}/32", *lan),
                          f"psk{rng.randrange(2)}", rng.choice((0, 25)))
        elements.add(("elem", TENANT_MAP, f"10.20.{i // 250}.{i % 250 + 2}/32",
                      rng.choice(("jump svc_a", "jump svc_b"))))
        if lan:
            routes.add(Route(lan[0], "wg9"))
    if extra_rule:
        elements.add(("rule", "input", 1, "{}"))
    digest = ConfigFile.digest_of(b"old config" if not extra_rule else b"new config")
    return ObservedState(IFACE, peers, frozenset(routes), _firewall(frozenset(elements)),
                         ConfigFile("/x/wg9.conf", digest))


def _partly(rng: random.Random, before: ObservedState, changes: Plan) -> ObservedState:
    """A host a kill can leave: each peer and route change done or not; the firewall and the
    config file are replaced atomically, so each is old or new."""
    peers = dict(before.peers)
    routes = set(before.routes)
    fw, config = before.firewall, before.config
    for c in changes:
        if rng.random() < 0.5:
            continue
        if isinstance(c, AddPeer):
            peers[c.peer.public_key] = c.peer
        elif isinstance(c, RemovePeer):
            peers.pop(c.peer.public_key)
        elif isinstance(c, UpdatePeer):
            peers[c.new.public_key] = c.new
        elif isinstance(c, AddRoute):
            routes.add(c.route)
        elif isinstance(c, DeleteRoute):
            routes.discard(c.route)
        elif isinstance(c, ReplaceFirewall):
            fw = c.new
        elif isinstance(c, WriteConfig):
            config = c.new
    return ObservedState(before.interface, peers, frozenset(routes), fw, config)


def _inverse(changes: Plan, before: ObservedState, tmp: Path) -> checkpoint.Inverse:
    psks = {k: f"secret-of-{k}" for k in before.peers}
    snap = Snapshot(before, Secrets(None, psks), "table inet tunnelctl { }", b"old config")
    inverse = checkpoint.Inverse.of(changes, snap)
    marker = checkpoint.marker_path(tmp, None, "wg9")  # and through the file, as after a kill
    checkpoint.write(marker, inverse, interface="wg9", netns=None, config_path=None)
    back = checkpoint.load(marker)
    assert back is not None
    checkpoint.clear(marker)
    return back.inverse


def test_the_inverse_over_any_partial_apply_is_the_host_before(tmp_path: Path) -> None:
    rng = random.Random(1313)
    for trial in range(60):
        before = _host(rng, 60)
        after = _host(rng, 60, extra_rule=trial % 4 == 0)  # every 4th: the table whole
        after = replace(after, config=ConfigFile("/x/wg9.conf", f"new{trial}"))
        if trial % 5 == 0:
            after = replace(after, firewall=None)
        changes = plan(after, before)
        inverse = _inverse(changes, before, tmp_path)
        # Only the changed peers' keys are kept, never the whole host's.
        touched = {c.peer.public_key for c in changes.of(RemovePeer)} | \
            {c.old.public_key for c in changes.of(UpdatePeer)}
        assert set(inverse.secrets.psks) == touched
        for _ in range(4):
            partial = _partly(rng, before, changes)
            undone = inverse.over(partial)
            assert undone.state == before, trial
            assert plan(undone.state, before).empty
            for key in inverse.secrets.psks:
                assert inverse.secrets.psk(key) == f"secret-of-{key}"
            whole = changes.of(ReplaceFirewall) and \
                changes.of(ReplaceFirewall)[0].element_delta() is None
            assert (undone.firewall_text is not None) == bool(whole and before.firewall)


def test_the_inverse_leaves_what_the_plan_did_not_touch(tmp_path: Path) -> None:
    rng = random.Random(77)
    before = _host(rng, 40)
    key = min(before.peers)
    want = dict(before.peers)
    want[key] = replace(want[key], keepalive=want[key].keepalive + 1)
    changes = plan(replace(before, peers=want), before)
    assert len(changes) == 1
    inverse = _inverse(changes, before, tmp_path)
    assert inverse.firewall is None and inverse.config is None and inverse.interface is None
    # Meanwhile (wireguard-go restarted, say) every other peer vanished: not this plan's doing.
    only = ObservedState(before.interface, {key: want[key]}, before.routes, before.firewall,
                         before.config)
    undone = inverse.over(only).state
    assert dict(undone.peers) == {key: before.peers[key]}
