"""A dual-stack gateway against a real wireguard-go interface in a throwaway namespace: the
customer /128s and lans6 in the peers' allowed IPs, IPv6 LAN routes (proto 252), address6 on
the interface, a second cycle that plans nothing, an IPv6 LAN removed route by route, and the
host-route guard refusing a LAN that overlaps a foreign IPv6 route.

Uses the engine-test host of tests/test_engine_netns.py (its own namespace, interface and
wireguard-go, removed even on failure)."""

from __future__ import annotations

import json
import subprocess
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_engine_netns import EngineHost, FailOnce, host  # noqa: F401  (the fixture)

from reconciler.engine.cycle import reconcile
from reconciler.engine.hoststate import ROUTE_PROTO, Route
from reconciler.engine.plan import AddRoute, DeleteRoute, Plan, UpdatePeer
from reconciler.engine.readback import observe_changes
from reconciler.engine.runner import Runner
from reconciler.lab import Lab, generate_repo, ping
from reconciler.repo.state import load_repo

pytestmark = pytest.mark.lab

ADDRESS6 = "fd42:4242:1::1/48"


def dual_stack(h: EngineHost, address6: str = ADDRESS6) -> None:
    """The test repo's gateway with address6/pool6 and three tunnels: two with subnet6 (one
    with two IPv6 LANs), one IPv4 only."""
    path = h.repo.root / "gateway.yaml"
    gw = yaml.safe_load(path.read_text())
    gw.update(address6=address6, pool6="fd42:4242:1::/48")
    path.write_text(yaml.safe_dump(gw))
    h.repo.put(1, subnet6="fd42:4242:1:1::/64", lans6=["fd99:1::/48", "fd99:2::/48"])
    h.repo.put(2, subnet6="fd42:4242:1:2::/64")
    h.repo.put(3)


def allowed_ips(h: EngineHost) -> dict[str, set[str]]:
    out = {}
    for line in h.sh("wg", "show", h.ifname, "allowed-ips").splitlines():
        key, _, ips = line.partition("\t")
        out[key] = set(ips.split()) - {"(none)"}
    return out


def our_routes6(h: EngineHost) -> set[str]:
    listing = json.loads(h.sh("ip", "-6", "-json", "route", "show", "table", "all", "dev",
                              h.ifname, "proto", str(ROUTE_PROTO)))
    return {r["dst"] for r in listing}


def addresses(h: EngineHost) -> set[str]:
    link = json.loads(h.sh("ip", "-json", "addr", "show", "dev", h.ifname))[0]
    return {f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
            if a.get("scope") != "link"}


def key_of(h: EngineHost, i: int) -> str:
    return str(h.repo.tunnels[f"org{i:03d}/site"]["public_key"])


def test_dual_stack_converges_and_removes_exactly_one_lan6(host: EngineHost) -> None:  # noqa: F811
    dual_stack(host)
    first = host.converged()  # applied, verified, and a second plan is empty
    assert {c.route.dst for c in first.plan.of(AddRoute)} == {"192.168.3.0/24", "fd99:1::/48",
                                                        "fd99:2::/48"}
    ips = allowed_ips(host)
    assert ips[key_of(host, 1)] == {"10.20.0.10/32", "fd42:4242:1:1::2/128", "fd99:1::/48",
                                    "fd99:2::/48"}
    assert ips[key_of(host, 2)] == {"10.20.0.14/32", "fd42:4242:1:2::2/128"}
    assert ips[key_of(host, 3)] == {"10.20.0.18/32", "192.168.3.0/24"}
    # The /128s lie in address6's on-link /48: only the LANs are routed.
    assert our_routes6(host) == {"fd99:1::/48", "fd99:2::/48"}
    assert addresses(host) == {"10.20.0.1/16", ADDRESS6}
    observed = host.observe()
    assert observed.interface is not None
    assert observed.interface.address == f"10.20.0.1/16,{ADDRESS6}"
    conf = host.target.config_path(host.ifname)
    assert f"\nAddress = 10.20.0.1/16, {ADDRESS6}\n" in conf.read_text()
    # wg-quick reads the file; syncing the live interface from it changes nothing.
    stripped = subprocess.run(["wg-quick", "strip", str(conf)], capture_output=True,
                              text=True, check=True).stdout
    synced = conf.parent / "stripped.conf"
    synced.write_text(stripped)
    synced.chmod(0o600)
    host.sh("wg", "syncconf", host.ifname, str(synced))
    assert host.apply().plan.empty

    host.repo.put(1, lans6=["fd99:1::/48"])
    r = host.converged()
    assert [c.route for c in r.plan.of(DeleteRoute)] == [Route("fd99:2::/48", host.ifname)]
    assert not r.plan.of(AddRoute)
    (upd,) = r.plan.of(UpdatePeer)
    assert [f[0] for f in upd.fields()] == ["allowed_ips"]
    assert our_routes6(host) == {"fd99:1::/48"}
    assert allowed_ips(host)[key_of(host, 1)] == {"10.20.0.10/32", "fd42:4242:1:1::2/128",
                                                  "fd99:1::/48"}

    # Removing address6/pool6 and every IPv6 field takes the host back to IPv4 only.
    path = host.repo.root / "gateway.yaml"
    gw = yaml.safe_load(path.read_text())
    del gw["address6"], gw["pool6"]
    path.write_text(yaml.safe_dump(gw))
    for i in (1, 2):
        data = host.repo.tunnels[f"org{i:03d}/site"]
        data.pop("subnet6"), data.pop("lans6", None)
        host.repo.put(i)
    host.converged()
    assert our_routes6(host) == set()
    assert addresses(host) == {"10.20.0.1/16"}


def test_customer_128_routed_when_address6_prefix_does_not_cover_it(
        host: EngineHost) -> None:  # noqa: F811
    dual_stack(host, address6="fd42:4242:1::1/64")
    host.converged()
    assert our_routes6(host) == {"fd99:1::/48", "fd99:2::/48", "fd42:4242:1:1::2",
                                 "fd42:4242:1:2::2"}


def test_ipv6_lan_over_a_foreign_ipv6_route_is_refused_and_it_is_left_alone(
        host: EngineHost) -> None:  # noqa: F811
    dual_stack(host)
    host.sh("ip", "link", "add", "hostbr0", "type", "veth", "peer", "name", "hostbr1")
    host.sh("ip", "link", "set", "hostbr0", "up")
    host.sh("ip", "-6", "route", "add", "fd99:5::/32", "dev", "hostbr0", "proto", "static")
    host.converged()
    before = host.sh("ip", "-6", "route", "show", "table", "all")
    for lan, how in (("fd99:5:1::/48", "overlaps"), ("fd99:5::/32", "equals")):
        host.repo.put(2, lans6=[lan])
        refused = host.apply()
        assert refused.failed_step == "guard" and not refused.applied, refused.error
        assert refused.error is not None
        assert (f"org002/site.yaml: LAN {lan} {how} the host route fd99:5::/32 dev hostbr0"
                in refused.error), refused.error
        assert host.sh("ip", "-6", "route", "show", "table", "all") == before
    host.repo.put(2, lans6=["fd99:6::/48"])
    host.converged()
    assert "fd99:5::/32 dev hostbr0 proto static" in host.sh("ip", "-6", "route", "show")
    assert "fd99:6::/48" in our_routes6(host)


def _picture(h: EngineHost) -> tuple[object, ...]:
    obs = h.observe()
    return (obs.interface, dict(obs.peers), obs.routes, h.secrets(), addresses(h),
            h.sh("ip", "-6", "route", "show", "table", "all", "dev", h.ifname),
            h.sh("ip", "route", "show", "table", "all", "dev", h.ifname),
            h.target.config_path(h.ifname).read_bytes())


@pytest.mark.parametrize("needle,step", [("route replace fd99:3::/48", "routes"),
                                         ("allowed_ip=fd99:3::/48", "peers")])
def test_failed_dual_stack_change_restores_ipv6_routes_and_peers(
        host: EngineHost, needle: str, step: str) -> None:  # noqa: F811
    dual_stack(host)
    host.converged()
    before = _picture(host)
    host.repo.put(1, lans6=["fd99:1::/48", "fd99:3::/48"])  # one IPv6 route out, one in
    host.repo.put(3, subnet6="fd42:4242:1:3::/64")
    runner = FailOnce(host.ns, needle)
    r = host.apply(runner=runner)
    assert runner.fired and r.failed_step == step and r.rolled_back, r.error
    assert _picture(host) == before
    host.converged()
    assert our_routes6(host) == {"fd99:1::/48", "fd99:3::/48"}


def test_the_change_path_reads_ipv6_routes_back(host: EngineHost) -> None:  # noqa: F811
    """observe_changes (the service's one-change verify) re-reads our routes of both
    families when a plan touched a route."""
    dual_stack(host)
    host.converged()
    before = host.observe()
    host.sh("ip", "route", "replace", "fd99:9::/48", "dev", host.ifname, "proto",
            str(ROUTE_PROTO))
    host.sh("ip", "route", "del", "fd99:2::/48", "dev", host.ifname)
    changes = Plan((AddRoute(Route("fd99:9::/48", host.ifname)),
                    DeleteRoute(Route("fd99:2::/48", host.ifname))))
    after = observe_changes(Runner(netns=host.ns), host.ifname, changes, before,
                            host.target.config_path(host.ifname))
    assert after.routes == before.routes - {Route("fd99:2::/48", host.ifname)} | {
        Route("fd99:9::/48", host.ifname)}
    assert after.routes == host.observe().routes


def v6(address: IPv6Address | None) -> IPv6Address:
    assert address is not None, "a dual-stack router has IPv6 addresses"
    return address


def test_cloud_reaches_customer_ipv6_lans_through_the_lab_and_loses_a_removed_one(
        lab: Any, tmp_path: Path) -> None:
    """The data plane of the host side alone, in the lab (customer routers with real
    wireguard-go): from the cloud namespace to each router's ::2 and IPv6 LAN host, over the
    engine's peers, address6 and IPv6 LAN routes (replies pass the firewall as replies)."""
    gen = generate_repo(tmp_path / "repo", 3, gateway="gw-six", dual_stack=True, lan_every=1,
                        sip_only_every=0)
    world: Lab = lab(gen.root, private_keys=gen.private_keys)
    first = reconcile(load_repo(gen.root), world.target())
    assert first.ok, f"{first.failed_step}: {first.error}"
    assert reconcile(load_repo(gen.root), world.target()).plan.empty
    assert all(world.wait_handshakes(world.routers, timeout=12).values())
    routers = list(world.routers.values())
    for r in routers:
        assert ping(world.netns, v6(r.address6), count=2), r.ident
        assert ping(world.netns, v6(r.host_address6), count=2), r.ident
    # One tenant's IPv6 LAN leaves its file: its route and allowed IP go, the others stay.
    gone, kept = routers[0], routers[1]
    repo = load_repo(gen.root)
    path = gen.root / repo.paths[gone.ident]
    data = yaml.safe_load(path.read_text())
    data.pop("lans6")
    path.write_text(yaml.safe_dump(data))
    removed = reconcile(load_repo(gen.root), world.target())
    assert removed.ok, removed.error
    assert [c.route.dst for c in removed.plan.of(DeleteRoute)] == [str(gone.lans6[0])]
    assert not ping(world.netns, v6(gone.host_address6), count=1)
    assert ping(world.netns, v6(kept.host_address6), count=2)
    assert ping(world.netns, v6(gone.address6), count=2)
