"""The host-route guard asks about a few new IPv4 routes with `ip route show root|match`
(the routes each holds and the routes that hold it) instead of listing the whole table: it
refuses a LAN that equals, lies in or holds a host route in any table, as the whole listing
does, and lets a free one through (lab)."""

from __future__ import annotations

import pytest
from test_engine_netns import EngineHost, host, populate  # noqa: F401 - `host` is a fixture

from reconciler.engine.runner import Runner

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
def test_a_few_new_routes_are_checked_by_targeted_reads(host: EngineHost,  # noqa: F811
                                                         quick: bool) -> None:
    host.sh("ip", "link", "add", "hostbr0", "type", "veth", "peer", "name", "hostbr1")
    host.sh("ip", "link", "set", "hostbr0", "up")
    host.sh("ip", "route", "add", "172.17.0.0/16", "dev", "hostbr0")  # like Docker's bridge
    host.sh("ip", "route", "add", "192.168.50.0/24", "dev", "hostbr0", "table", "100")
    populate(host, 2)
    host.converged()
    routes = host.sh("ip", "route", "show", "table", "all")
    for lan, how, route in (("172.17.0.0/16", "equals", "172.17.0.0/16 dev hostbr0"),
                            ("172.17.3.0/24", "overlaps", "172.17.0.0/16 dev hostbr0"),
                            ("192.168.0.0/16", "overlaps", "192.168.50.0/24 dev hostbr0")):
        host.repo.put(1, lans=[lan])
        runner = Runner(netns=host.ns)
        refused = host.apply(runner=runner, quick=quick)
        assert refused.failed_step == "guard" and not refused.applied, refused.error
        assert f"LAN {lan} {how} the host route {route}" in str(refused.error)
        assert host.sh("ip", "route", "show", "table", "all") == routes  # nothing touched
        asked = [a for a in runner.log if "route" in a and ("root" in a or "match" in a)]
        assert len(asked) == 2, runner.log  # root and match of the one new LAN, no listing
    host.repo.put(1, lans=["192.168.51.0/24"])
    done = host.apply(quick=quick)
    assert done.applied and done.verified, done.error
    assert "192.168.51.0/24 proto 252" in host.sh("ip", "route", "show", "dev", host.ifname)
