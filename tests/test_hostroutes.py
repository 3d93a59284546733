"""Pure parts of the host-route guard: which host routes count, and what conflicts."""

from __future__ import annotations

import json

from reconciler.engine.hostroutes import foreign_routes, route_conflicts

# Shapes as `ip -4 -json route show table all` prints them (iproute2 6.1).
LISTING = json.dumps([
    {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0", "flags": []},
    {"dst": "192.0.2.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link",
     "prefsrc": "192.0.2.2", "flags": []},
    {"dst": "172.17.0.0/16", "dev": "docker0", "protocol": "kernel", "scope": "link",
     "prefsrc": "172.17.0.1", "flags": ["linkdown"]},
    {"dst": "10.0.0.0/16", "gateway": "192.0.2.1", "dev": "eth0", "table": "100",
     "flags": []},
    {"dst": "10.20.0.0/16", "dev": "wg1", "protocol": "kernel", "scope": "link",
     "prefsrc": "10.20.0.1", "flags": []},
    {"dst": "192.168.10.0/24", "dev": "wg1", "protocol": "252", "scope": "link", "flags": []},
    {"type": "blackhole", "dst": "192.168.0.0/16", "flags": []},
    {"type": "local", "dst": "192.0.2.2", "dev": "eth0", "table": "local",
     "protocol": "kernel", "scope": "host", "prefsrc": "192.0.2.2", "flags": []},
    {"type": "broadcast", "dst": "192.0.2.255", "dev": "eth0", "table": "local",
     "protocol": "kernel", "scope": "link", "prefsrc": "192.0.2.2", "flags": []},
    {"dst": "10.9.0.0/24", "protocol": "static", "flags": [],
     "nexthops": [{"gateway": "192.0.2.7", "dev": "eth1"}, {"gateway": "192.0.2.8", "dev": "eth2"}]},
])


def test_routes_on_other_devices_count_ours_and_non_destinations_do_not() -> None:
    found = {(str(r.dst), r.dev, r.table) for r in foreign_routes(LISTING, "wg1")}
    assert found == {("192.0.2.0/24", "eth0", "main"), ("172.17.0.0/16", "docker0", "main"),
                     ("10.0.0.0/16", "eth0", "100"), ("192.0.2.2/32", "eth0", "local"),
                     ("10.9.0.0/24", "eth1", "main")}


def test_equal_narrower_and_wider_lans_conflict_neighbours_do_not() -> None:
    host = foreign_routes(LISTING, "wg1")
    owners = {"172.17.0.0/16": "acme/hq.yaml", "10.0.5.0/24": "bravo/dc.yaml",
              "10.0.0.0/8": "carrot/x.yaml", "172.18.0.0/16": "dodo/y.yaml"}
    conflicts = route_conflicts(owners, host, owners)
    assert {(c.tenant_file, str(c.route.dst)) for c in conflicts} == {
        ("acme/hq.yaml", "172.17.0.0/16"), ("bravo/dc.yaml", "10.0.0.0/16"),
        ("carrot/x.yaml", "10.0.0.0/16"), ("carrot/x.yaml", "10.9.0.0/24")}
    text = str(next(c for c in conflicts if c.tenant_file == "acme/hq.yaml"))
    assert "acme/hq.yaml: LAN 172.17.0.0/16 equals the host route 172.17.0.0/16 dev docker0" in text
    assert route_conflicts(["192.168.10.0/24"], host, {}) == ()  # under a blackhole: fine
