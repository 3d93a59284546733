"""The fast paths added for scale (issue 6) do the same thing as the slow ones they replace.

Unit: element-only firewall deltas and their nft transaction; the template frame splice gives
the template's own text; render reuses per-tunnel work only for the very same model objects.
Lab (real wireguard-go, ip, nft): a changed desired state right after a verified cycle is
planned against that cycle's state and read back piecewise, yet leaves the host exactly as a
full cycle would; a write that silently did nothing is caught and rolled back; another
writer's apply (a different config file) sends the next change through a full observe.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine import render as R
from reconciler.engine.cycle import ReconcileResult, reconcile
from reconciler.engine.hoststate import Firewall, canonical_cidr
from reconciler.engine.nft_transactions import element_transaction
from reconciler.engine.plan import AddRoute, ReplaceFirewall, UpdatePeer, WriteConfig
from reconciler.engine.psk import derive_psk, psk_deriver
from reconciler.engine.runner import Result, Runner
from reconciler.engine.wgkeys import generate_private_key
from reconciler.lab import Lab, generate_repo
from reconciler.repo.state import ParseCache, RepoState, load_repo

TENANTS = Path(__file__).resolve().parent.parent / "tenants"


def test_psk_deriver_gives_the_hkdf_keys() -> None:
    secret = os.urandom(32)
    derive = psk_deriver(secret)
    for org, name, rotation in [("acme-voip", "hq", 0), ("acme-voip", "hq", 1), ("b", "x", 7)]:
        assert derive(org, name, rotation) == derive_psk(secret, org, name, rotation)
    assert psk_deriver(os.urandom(32))("b", "x", 7) != derive("b", "x", 7)


def test_canonical_cidr_fast_path_agrees_with_ipaddress() -> None:
    rng = random.Random(6)
    cases = ["10.20.0.6", "10.20.0.6/32", "10.20.0.7/30", "0.0.0.0/0", "255.255.255.255/32",
             " 10.1.2.3/8 ", "010.1.2.3", "1.2.3", "256.1.1.1", "1.2.3.4/33", "1.2.3.4/08",
             "1.2.3.4/0x8", "0x1.2.3.4", "1.2.3.04", "1.2.3.4.5", "fe80::1/64", "::1"]
    for _ in range(3000):
        v, n = rng.getrandbits(32), rng.randint(0, 32)
        addr = ".".join(str((v >> s) & 255) for s in (24, 16, 8, 0))
        cases += [addr, f"{addr}/{n}"]

    def outcome(fn: Any, text: str) -> str:
        try:
            return str(fn(text))
        except ValueError:
            return "error"

    for text in cases:
        want = outcome(lambda t: ipaddress.ip_network(t.strip(), strict=False), text)
        assert outcome(canonical_cidr, text) == want, text


def _fw(elements: set[tuple[str | int, ...]]) -> Firewall:
    return Firewall("inet", "tunnelctl", "fp", frozenset(elements))


def test_element_delta_only_for_element_changes() -> None:
    chain = ("chain", "input", "filter", "input", -5, "accept")
    a = ("elem", "tenant_hosts", "10.20.0.6/32", "jump svc_sip")
    b = ("elem", "tenant_hosts", "10.20.0.10/32", "jump svc_rtp_sip")
    b2 = ("elem", "tenant_hosts", "10.20.0.10/32", "jump svc_sip")
    lan = ("elem", "tenant_profiles", "192.168.1.0/24", "jump svc_sip")
    delta = ReplaceFirewall(_fw({chain, a, b}), _fw({chain, a, b2, lan})).element_delta()
    assert delta == (frozenset({b}), frozenset({b2, lan}))
    assert ReplaceFirewall(_fw({chain, a}), _fw({a})).element_delta() is None  # a chain went
    assert ReplaceFirewall(None, _fw({a})).element_delta() is None
    assert ReplaceFirewall(_fw({a}), None).element_delta() is None
    text = element_transaction({b}, {b2, lan, ("elem", "routed_ranges", "10.0.0.0/8", "")})
    # A /32 is written as a plain address: the host map is a hash map, which takes none.
    assert text.splitlines() == [
        "delete element inet tunnelctl tenant_hosts { 10.20.0.10 }",
        "add element inet tunnelctl routed_ranges { 10.0.0.0/8 }",
        "add element inet tunnelctl tenant_hosts { 10.20.0.10 : jump svc_sip }",
        "add element inet tunnelctl tenant_profiles { 192.168.1.0/24 : jump svc_sip }",
    ]


def _render(repo: RepoState, secret: bytes, key: str) -> Any:
    gw = next(iter(repo.gateways.values()))
    return R.render_host(gw, repo.tunnels, interface="wg7", private_key=key, host_secret=secret,
                         config_path=Path("/nonexistent/wg7.conf"))


def test_render_reuses_work_only_for_the_same_model_objects() -> None:
    repo = load_repo(TENANTS)
    secret, key = os.urandom(32), generate_private_key()
    first = _render(repo, secret, key)
    assert _render(repo, secret, key) is first  # same inputs: the previous result
    fresh = load_repo(TENANTS)  # equal content, new objects: rendered again, same values
    again = _render(fresh, secret, key)
    assert again is not first and again[0] == first[0]
    assert again[1].psks == first[1].psks
    # One tunnel changed: only it renders differently; the others keep their peer objects.
    tunnels = list(fresh.tunnels)
    tunnels[0] = tunnels[0].model_copy(update={"psk_rotation": tunnels[0].psk_rotation + 1,
                                               "lans": (ipaddress.IPv4Network("10.99.0.0/24"),)})
    changed = _render(dataclasses.replace(fresh, tunnels=tuple(tunnels)), secret, key)
    k0 = tunnels[0].public_key
    assert changed[0].peers[k0] != again[0].peers[k0]
    assert "10.99.0.0/24" in changed[0].peers[k0].allowed_ips
    assert all(changed[0].peers[t.public_key] is again[0].peers[t.public_key]
               for t in tunnels[1:] if t.public_key in again[0].peers)
    assert any(e[0] == "elem" and e[2] == "10.99.0.0/24" for e in changed[0].firewall.elements)
    assert changed[0].firewall.text.count("10.99.0.0/24") == 1


# ------------------------------------------------------------------------------- lab


class _Bed:
    def __init__(self, root: Path) -> None:
        self.gen = generate_repo(root / "repo", 12, gateway="gw-perf")
        self.cache = ParseCache()  # as the service: unchanged files keep their model objects
        self.lab = Lab(self.gen.root, routers=0, infra=False, services=False).up()
        self.target = self.lab.target()

    def state(self) -> RepoState:
        repo = load_repo(self.gen.root, self.cache)
        assert repo.ok, repo.problems
        return repo

    def apply(self, runner: Runner | None = None, *, quick: bool = True) -> ReconcileResult:
        return reconcile(self.state(), self.target, runner=runner or Runner(self.lab.netns),
                         quick=quick)

    def lab_sh(self, *argv: str) -> str:
        return Runner(self.lab.netns).run(list(argv)).stdout

    def peers(self) -> set[str]:
        return set(self.lab_sh("wg", "show", self.lab.interface, "peers").split())

    def set_lans(self, index: int, lans: str) -> None:
        path = self.gen.tunnels[index].path
        text = path.read_text()
        start = text.index("lans: [")
        end = text.index("]", start) + 1
        path.write_text(text[:start] + f"lans: [{lans}]" + text[end:])


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[_Bed]:
    b = _Bed(tmp_path)
    try:
        yield b
    finally:
        b.lab.down()


def _converged(bed: _Bed) -> None:
    first = bed.apply()
    assert first.verified, first.error
    again = bed.apply()
    assert again.plan.empty and again.writes == 0 and "observe" in again.timings


@pytest.mark.lab
def test_a_change_is_read_back_piecewise_and_leaves_what_a_full_cycle_would(bed: _Bed) -> None:
    _converged(bed)
    bed.set_lans(0, "10.99.0.0/24")
    runner = Runner(bed.lab.netns)
    r = bed.apply(runner)
    assert r.verified and r.error is None, r.error
    assert "observe" not in r.timings  # planned against the verified state, not re-read
    assert {type(c) for c in r.plan} == {UpdatePeer, AddRoute, ReplaceFirewall, WriteConfig}
    reads = [" ".join(a[4:7]) for a in runner.log if a[:3] == ("ip", "netns", "exec")]
    # The table is known without reading it: the ruleset generation moved by exactly the
    # one element transaction apply ran since the table was last listed.
    assert not any(x.startswith(("nft -j list", "nft list", "nft get")) for x in reads), reads
    # A full cycle of the same state finds nothing to do: the host is what it should be.
    full = bed.apply(quick=False)
    assert "observe" in full.timings and full.plan.empty and full.writes == 0
    # Another commit in between (here a foreign table) and the change is read back instead.
    bed.lab_sh("nft", "add", "table", "inet", "someone_else")
    bed.set_lans(0, "")
    runner = Runner(bed.lab.netns)
    r = bed.apply(runner)
    assert r.verified and "observe" not in r.timings, r.error
    reads = [" ".join(a[4:7]) for a in runner.log if a[:3] == ("ip", "netns", "exec")]
    assert "nft get element" in reads
    full = bed.apply(quick=False)
    assert "observe" in full.timings and full.plan.empty and full.writes == 0


@pytest.mark.lab
def test_without_quick_a_change_observes_in_full_and_repairs_drift(bed: _Bed) -> None:
    _converged(bed)
    victim = bed.gen.tunnels[4].public_key
    bed.lab_sh("wg", "set", bed.lab.interface, "peer", victim, "remove")
    bed.set_lans(3, "10.99.3.0/24")
    quick = bed.apply()
    assert quick.verified and "observe" not in quick.timings
    assert victim not in bed.peers(), "a quick cycle neither sees nor repairs drift"
    full = bed.apply(quick=False)  # what the service runs right after applying a commit
    assert full.verified and "observe" in full.timings and victim in bed.peers()
    bed.set_lans(3, "")
    slow = bed.apply(quick=False)
    assert slow.verified and "observe" in slow.timings


class _DropsElementWrites(Runner):
    """Claims success for nft element transactions without running them."""

    def run(self, argv: Any, *, stdin: str | bytes | None = None, check: bool = True,
            write: bool = False, timeout: float = 60.0,
            detach: bool = False) -> Result:
        if write and isinstance(stdin, str) and stdin.startswith(("add element", "delete element")):
            self.writes += 1
            return Result(tuple(argv), 0, "", "")
        return super().run(argv, stdin=stdin, check=check, write=write, timeout=timeout,
                           detach=detach)


@pytest.mark.lab
def test_a_write_that_did_nothing_is_caught_and_rolled_back(bed: _Bed) -> None:
    _converged(bed)
    bed.set_lans(1, "10.99.1.0/24")
    r = bed.apply(_DropsElementWrites(bed.lab.netns))
    assert r.failed_step == "verify" and r.rolled_back, (r.failed_step, r.error)
    fixed = bed.apply()  # the next cycle observes in full and converges
    assert fixed.verified and "observe" in fixed.timings
    assert bed.apply().plan.empty


@pytest.mark.lab
def test_another_writers_apply_sends_the_next_change_through_a_full_observe(bed: _Bed) -> None:
    _converged(bed)
    conf = bed.target.config_path(bed.lab.interface)
    conf.write_text(conf.read_text() + "# touched by another tunnelctl\n")
    bed.set_lans(2, "")
    r = bed.apply()
    assert r.verified and "observe" in r.timings
    assert bed.apply().plan.empty


@pytest.mark.lab
def test_a_no_op_cycle_lists_the_table_only_when_the_ruleset_generation_moved(bed: _Bed) -> None:
    _converged(bed)

    def nft_reads() -> list[str]:
        runner = Runner(bed.lab.netns)
        r = bed.apply(runner, quick=False)
        assert r.verified and r.plan.empty and r.writes == 0, r.error
        return [" ".join(a[4:8]) for a in runner.log
                if a[:3] == ("ip", "netns", "exec") and a[4] == "nft"]

    assert nft_reads() == []  # same generation as the last listing: the very same table
    bed.lab_sh("nft", "add", "table", "inet", "someone_else")  # any commit, any table
    assert nft_reads() == ["nft -j list table"]
    assert nft_reads() == []
    # A hand edit of our table is a commit too: listed, found and repaired.
    bed.lab_sh("nft", "delete", "element", "inet", "tunnelctl", "tenant_hosts",
               "{ " + str(bed.gen.tunnels[1].subnet.network_address + 2) + " }")
    fixed = bed.apply(quick=False)
    assert fixed.verified and [type(c) for c in fixed.plan] == [ReplaceFirewall]


def test_many_lan_removals_load_the_table_whole_host_removals_stay_element_deletes() -> None:
    from reconciler.engine.commands import firewall_commands
    from reconciler.engine.nft_transactions import INTERVAL_DELETE_LIMIT

    chain = ("chain", "input", "filter", "input", -5, "accept")
    hosts = {("elem", "tenant_hosts", f"10.20.{i >> 6}.{(i & 63) * 4 + 2}/32", "jump svc_sip")
             for i in range(200)}
    lans = {("elem", "tenant_profiles", f"172.16.{i}.0/24", "jump svc_sip")
            for i in range(INTERVAL_DELETE_LIMIT + 1)}
    old = _fw({chain, *hosts, *lans})
    text = "table inet tunnelctl {\n}\n"

    def stdin(new: Firewall) -> str:
        (cmd,) = firewall_commands(ReplaceFirewall(old, new))
        assert isinstance(cmd.stdin, str)  # type: ignore[union-attr]
        return cmd.stdin  # type: ignore[union-attr]

    # 200 host-map deletions: one element transaction (a hash map deletes fast).
    assert stdin(dataclasses.replace(_fw({chain, *lans}), text=text)).startswith("delete element")
    # One LAN past the limit: the whole table, in one atomic transaction.
    whole = stdin(dataclasses.replace(_fw({chain, *hosts}), text=text))
    assert whole.startswith("table inet tunnelctl {}\ndelete table inet tunnelctl\n")
    # Without text to load (a rollback's snapshot of an element change), elements it is.
    assert stdin(_fw({chain, *hosts})).startswith("delete element")
