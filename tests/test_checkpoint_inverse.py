"""The checkpoint holds the plan's inverse: applied over any host a killed apply can leave
(each change done or not, the firewall's transaction all or nothing), it gives back the host
before the plan, and it leaves what the plan did not touch as found (issue 13)."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine import checkpoint
from reconciler.engine.cycle import HostTarget, reconcile, recover_interrupted
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
from reconciler.engine.observe import Snapshot, observe
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
from reconciler.engine.runner import Result, Runner
from reconciler.lab import add_generated_tunnels, generate_repo
from reconciler.repo.state import load_repo

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


# ------------------------------------------------------------------ on a real host (lab)


class _Killed(BaseException):
    """Not an Exception: the engine's rollback does not catch it, as with kill -9."""


def _killing_runner(netns: str, after: int) -> Runner:
    class KillAfter(Runner):
        def _check(self) -> None:
            if self.writes >= after:
                raise _Killed

        def run(self, argv: Sequence[str], **kw: Any) -> Result:
            res = super().run(argv, **kw)
            self._check()
            return res

        def uapi(self, interface: str, request: str, *, write: bool = False) -> str:
            res = super().uapi(interface, request, write=write)
            self._check()
            return res

        def write_file(self, path: Path, content: str, mode: int = 0o600) -> None:
            super().write_file(path, content, mode)
            self._check()

    return KillAfter(netns=netns)


def _live(runner: Runner, target: HostTarget) -> tuple[object, ...]:
    assert target.interface is not None
    st = observe(runner, target.interface, config_path=target.config_path(target.interface))
    return (st.interface, dict(st.peers), st.routes, st.firewall, st.config)


@pytest.mark.lab
def test_a_killed_apply_is_undone_exactly_by_its_inverse(tmp_path: Path,
                                                         lab: Callable[..., Any]) -> None:
    """Converge tree A, apply tree B (peers removed, added, updated; LAN routes and map
    elements removed; the config file) killed after its 1st, 2nd, ... host write; the
    checkpoint's inverse puts back exactly host A, and the next apply converges to B."""
    gen = generate_repo(tmp_path / "a", 12, gateway="lab-1")
    b = tmp_path / "b"
    shutil.copytree(gen.root, b)
    files = sorted(b.glob("*/*.yaml"))
    for f in files[:2]:
        f.unlink()
    for f in files[2:8]:
        text = f.read_text().replace("persistent_keepalive: 25",
                                     "persistent_keepalive: 25\ncloud_keepalive: 20")
        f.write_text("\n".join("lans: []" if ln.startswith("lans:") else ln
                               for ln in text.splitlines()) + "\n")
    add_generated_tunnels(b, 2, gateway="lab-1", org_prefix="new", lan_every=1)
    repo_a, repo_b = load_repo(gen.root), load_repo(b)
    assert repo_a.ok and repo_b.ok
    the_lab = lab(gen.root, routers=0, infra=False, services=False,
                  private_keys=gen.private_keys)
    target = the_lab.target()
    runner = Runner(netns=target.netns)
    killed_at = []
    for after in range(1, 12):
        assert reconcile(repo_a, target, gateway="lab-1").ok
        before = _live(runner, target)
        try:
            res = reconcile(repo_b, target, gateway="lab-1",
                            runner=_killing_runner(target.netns or "", after))
        except _Killed:
            killed_at.append(after)
            assert list(target.checkpoint_dir.glob("*.pending")), "no checkpoint was left"
            done = recover_interrupted(target)
            assert done and "restored" in done[0], done
            assert _live(runner, target) == before, f"killed after write {after}"
            assert not list(target.checkpoint_dir.glob("*.pending*"))
            continue
        assert res.ok and res.applied  # fewer writes than `after`: it ran to the end
        break
    assert len(killed_at) >= 3, killed_at  # firewall, peers, routes, config: each a write
    assert reconcile(repo_b, target, gateway="lab-1").ok
    assert reconcile(repo_b, target, gateway="lab-1", dry_run=True).plan.empty
