"""The quick change path reads back only what it changed (lab, root: real wireguard-go, ip, nft):
the changed routes with `ip route show exact` in every table, the changed peers from
wireguard-go's control socket, the tenant map elements by the ruleset generation. Each
narrow read must still catch a write that silently did nothing, and must see a route of the
changed destination left in another table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from test_perf_paths import _Bed, _converged, bed  # noqa: F401  (the fixture)

from reconciler.engine.hoststate import ROUTE_PROTO
from reconciler.engine.nftbatch import Message
from reconciler.engine.plan import AddRoute, DeleteRoute
from reconciler.engine.runner import Result, Runner

pytestmark = pytest.mark.lab


class _Drops(Runner):
    """Claims success for one kind of write without doing it."""

    def __init__(self, netns: str, drop: str) -> None:
        super().__init__(netns)
        self.drop = drop

    def run(self, argv: Any, *, stdin: str | bytes | None = None, check: bool = True,
            write: bool = False, timeout: float = 60.0, detach: bool = False) -> Result:
        if write and self.drop == "routes" and "-batch" in argv:
            self.writes += 1
            return Result(tuple(argv), 0, "", "")
        return super().run(argv, stdin=stdin, check=check, write=write, timeout=timeout,
                           detach=detach)

    def uapi(self, interface: str, request: str, *, write: bool = False) -> str:
        if write and self.drop == "peers":
            self.writes += 1
            return ""
        return super().uapi(interface, request, write=write)

    def nft_elements(self, messages: Sequence[Message], stdin: str) -> None:
        if self.drop == "elements":
            self.writes += 1
            return
        super().nft_elements(messages, stdin)


@pytest.mark.parametrize("drop", ["routes", "peers", "elements"])
def test_a_dropped_write_is_caught_by_the_narrow_read_back(bed: _Bed, drop: str) -> None:  # noqa: F811
    _converged(bed)
    bed.set_lans(1, "10.99.1.0/24")
    r = bed.apply(_Drops(bed.lab.netns, drop))
    assert "observe" not in r.timings, "the quick path ran"
    assert r.failed_step == "verify" and r.rolled_back, (r.failed_step, r.error)
    fixed = bed.apply()
    assert fixed.verified and bed.apply().plan.empty


def test_the_route_read_back_is_one_exact_read_per_changed_destination(bed: _Bed) -> None:  # noqa: F811
    _converged(bed)
    bed.set_lans(2, "10.99.2.0/24, 10.99.3.0/24")
    runner = Runner(bed.lab.netns)
    r = bed.apply(runner)
    assert r.verified and "observe" not in r.timings, r.error
    exact = sorted(a[-1] for a in runner.log if "exact" in a)
    changed = sorted(c.route.dst for c in r.plan.changes if isinstance(c, (AddRoute, DeleteRoute)))
    assert exact == changed and {"10.99.2.0/24", "10.99.3.0/24"} <= set(exact)
    assert not any(a[4:7] == ("wg", "show", bed.lab.interface) for a in runner.log)
    assert any(a[:3] == ("uapi", bed.lab.interface, "get=1") for a in runner.log)
    assert not any(a[4:6] == ("nft", "-f") for a in runner.log)  # the netlink batch
    assert any(a[0] == "nft-netlink" for a in runner.log)


def test_an_old_route_of_the_destination_in_another_table_is_seen(bed: _Bed) -> None:  # noqa: F811
    """Another table's route of ours to the very destination a change adds: a whole listing
    would show it; the exact read (`table all`) must too, and the full cycle removes it."""
    _converged(bed)
    bed.lab_sh("ip", "route", "add", "10.99.4.0/24", "dev", bed.lab.interface, "proto",
               str(ROUTE_PROTO), "table", "77")
    bed.set_lans(3, "10.99.4.0/24")
    r = bed.apply()
    assert "observe" not in r.timings
    assert r.failed_step == "verify" and "10.99.4.0/24" in (r.error or ""), r.error
    fixed = bed.apply()
    assert fixed.verified, fixed.error
    assert "table 77" not in bed.lab_sh("ip", "route", "show", "table", "all", "10.99.4.0/24")
