"""The service's change path (reconcile quick=True) reads the host's routes for the guard
beside the lock and plan when the render gained routes: it refuses a LAN that takes over a
host route exactly as the guard's own read does, and applies a free one (lab)."""

from __future__ import annotations

import pytest
from test_engine_netns import EngineHost, host, populate  # noqa: F401 - `host` is a fixture

from reconciler.engine import hostroutes

pytestmark = pytest.mark.lab


def test_quick_change_guard_reads_ahead_and_still_refuses(
        host: EngineHost, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    host.sh("ip", "link", "add", "hostbr0", "type", "veth", "peer", "name", "hostbr1")
    host.sh("ip", "link", "set", "hostbr0", "up")
    host.sh("ip", "route", "add", "172.17.0.0/16", "dev", "hostbr0")  # like Docker's bridge
    populate(host, 2)
    host.converged()
    reads: list[hostroutes.HostRoutesRead] = []
    real = hostroutes.HostRoutesRead.__init__

    def counted(self: hostroutes.HostRoutesRead, *args: object) -> None:
        real(self, *args)  # type: ignore[arg-type]
        reads.append(self)

    monkeypatch.setattr(hostroutes.HostRoutesRead, "__init__", counted)
    routes = host.sh("ip", "route", "show", "table", "all")
    host.repo.put(1, lans=["172.17.0.0/16"])
    refused = host.apply(quick=True)
    assert refused.failed_step == "guard" and not refused.applied, refused.error
    assert "LAN 172.17.0.0/16 equals the host route 172.17.0.0/16 dev hostbr0" in str(
        refused.error)
    assert host.sh("ip", "route", "show", "table", "all") == routes  # nothing touched
    assert len(reads) == 1  # read ahead, and that read refused it
    host.repo.put(1, lans=["192.168.51.0/24"])
    done = host.apply(quick=True)
    assert done.applied and done.verified, done.error
    assert "192.168.51.0/24 proto 252" in host.sh("ip", "route", "show", "dev", host.ifname)
    host.repo.put(1, lans=[])  # fewer routes: nothing read ahead
    done = host.apply(quick=True)
    assert done.applied and done.verified, done.error
    assert len(reads) == 2
