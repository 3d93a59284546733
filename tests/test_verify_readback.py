"""A full verify after a whole-table load knows the table without listing it, exactly.

Lab (real wireguard-go, wg, ip, nft): `nft -f` of our table is one atomic transaction, so
when the ruleset generation after apply is the one observe listed at + 1, the table is the
one loaded and verify does not list 21.8k elements (at 16k tenants) again. Another writer's
commit in between makes verify list it; the next full observe lists it either way. A big
plan's read-back starts the wg dump once the peers are written, beside the route step.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine import cycle
from reconciler.engine.cycle import ReconcileResult, reconcile
from reconciler.engine.plan import ReplaceFirewall
from reconciler.engine.runner import Result, Runner
from reconciler.lab import Lab, generate_repo
from reconciler.repo.state import ParseCache, load_repo

pytestmark = pytest.mark.lab


class _Bed:
    def __init__(self, root: Path) -> None:
        self.gen = generate_repo(root / "repo", 12, gateway="gw-readback")
        self.cache = ParseCache()
        self.lab = Lab(self.gen.root, routers=0, infra=False, services=False).up()
        self.target = self.lab.target()

    def apply(self, runner: Runner | None = None) -> tuple[ReconcileResult, Runner]:
        runner = runner or Runner(self.lab.netns)
        repo = load_repo(self.gen.root, self.cache)
        assert repo.ok, repo.problems
        return reconcile(repo, self.target, runner=runner), runner

    def sh(self, *argv: str) -> str:
        return Runner(self.lab.netns).run(list(argv)).stdout


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[_Bed]:
    b = _Bed(tmp_path)
    try:
        yield b
    finally:
        b.lab.down()


def _listings(runner: Runner) -> int:
    """How many times the cycle listed our table (`nft -j list table ...`)."""
    return sum(1 for a in runner.log
               if a[:3] == ("ip", "netns", "exec") and a[4:7] == ("nft", "-j", "list"))


class _CommitsAfterLoad(Runner):
    """Another writer: right after each whole-table `nft -f`, it adds a table of its own."""

    def __init__(self, netns: str | None, table: str) -> None:
        super().__init__(netns)
        self.table = table

    def run(self, argv: Any, *, stdin: str | bytes | None = None, check: bool = True,
            write: bool = False, timeout: float = 60.0, detach: bool = False) -> Result:
        out = super().run(argv, stdin=stdin, check=check, write=write, timeout=timeout,
                          detach=detach)
        if write and list(argv[:2]) == ["nft", "-f"] and isinstance(stdin, str) \
                and stdin.startswith("table inet tunnelctl {}\ndelete table"):
            super().run(["nft", "add", "table", "inet", self.table])
        return out


def test_a_cold_load_is_verified_without_listing_the_table_and_listed_next_cycle(
        bed: _Bed) -> None:
    first, runner = bed.apply()
    assert first.verified, first.error
    assert next(c for c in first.plan if isinstance(c, ReplaceFirewall)).old is None
    assert _listings(runner) == 1  # observe, which found the table absent; verify: none
    again, runner = bed.apply()  # a full cycle: the table is listed, and is what we loaded
    assert again.verified and again.plan.empty and again.writes == 0, again.error
    assert _listings(runner) == 1
    _, runner = bed.apply()  # same generation as that listing: the very same table
    assert _listings(runner) == 0


def test_another_commit_between_apply_and_verify_makes_verify_list_the_table(
        bed: _Bed) -> None:
    foreign = f"h7_other_{bed.lab.interface}"
    first, runner = bed.apply(_CommitsAfterLoad(bed.lab.netns, foreign))
    assert first.verified, first.error
    assert _listings(runner) == 2  # observe, and verify: the generation moved by two
    assert foreign in bed.sh("nft", "list", "tables")
    again, _ = bed.apply()
    assert again.verified and again.plan.empty and again.writes == 0, again.error


def test_a_table_deleted_by_hand_is_reloaded_and_verified_without_a_listing(
        bed: _Bed) -> None:
    first, _ = bed.apply()
    assert first.verified, first.error
    bed.sh("nft", "delete", "table", "inet", "tunnelctl")
    fixed, runner = bed.apply()
    assert fixed.verified, fixed.error
    assert [type(c) for c in fixed.plan] == [ReplaceFirewall]
    assert _listings(runner) == 1  # observe found it absent; the reload is known
    # A hand edit right after (a commit of ours and one more): listed, found and repaired.
    bed.sh("nft", "flush", "chain", "inet", "tunnelctl", "input")
    again, runner = bed.apply()
    assert again.verified and [type(c) for c in again.plan] == [ReplaceFirewall], again.error
    assert bed.apply()[0].plan.empty


class _WaitsForTheDumpInTheRouteStep(Runner):
    """Records whether a `wg show dump` started after the peers were written, before the
    route step's `ip -batch` finished (it waits for one, at most 20 s)."""

    def __init__(self, netns: str | None) -> None:
        super().__init__(netns)
        self.peers_written = False
        self.dumped = threading.Event()
        self.dump_beside_routes: bool | None = None

    def uapi(self, interface: str, request: str, *, write: bool = False) -> str:
        out = super().uapi(interface, request, write=write)
        if write and "public_key=" in request:
            self.peers_written = True
        return out

    def run(self, argv: Any, *, stdin: str | bytes | None = None, check: bool = True,
            write: bool = False, timeout: float = 60.0, detach: bool = False) -> Result:
        if list(argv[:2]) == ["wg", "show"] and argv[-1] == "dump" and self.peers_written:
            self.dumped.set()
        if (write and list(argv[:2]) == ["ip", "-batch"] and isinstance(stdin, str)
                and "route" in stdin and self.peers_written):
            self.dump_beside_routes = self.dumped.wait(20.0)
        return super().run(argv, stdin=stdin, check=check, write=write, timeout=timeout,
                           detach=detach)


def test_a_big_plans_full_verify_starts_the_dump_before_the_route_step(
        bed: _Bed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cycle, "EXPECT_MIN_CHANGES", 0)  # 12 tenants make a "big" plan
    runner = _WaitsForTheDumpInTheRouteStep(bed.lab.netns)
    first, _ = bed.apply(runner)
    assert first.verified, first.error
    assert runner.dump_beside_routes is True
    assert bed.apply()[0].plan.empty
