"""The lab's own mechanics: what it builds, that it never collides, that it always cleans up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.cli import main as cli
from reconciler.engine import wgkeys
from reconciler.engine.runner import UAPI_DIR, Runner
from reconciler.lab import (
    Lab,
    LabError,
    add_generated_tunnels,
    demo_private_keys,
    generate_repo,
    list_namespaces,
    ping,
)
from reconciler.lab.layout import (
    MAX_ROUTERS,
    LayoutError,
    check_lab_name,
    new_lab_name,
    plan_router,
)
from reconciler.lab.processes import uapi_socket_busy
from reconciler.repo.state import load_repo

REPO_ROOT = Path(__file__).resolve().parent.parent
TENANTS = REPO_ROOT / "tenants"
TUNNELCTL = str(Path(sys.executable).with_name("tunnelctl"))


def _wireguard_go_cmdlines() -> list[str]:
    out = subprocess.run(["pgrep", "-a", "wireguard-go"], check=False, capture_output=True,
                         text=True).stdout
    return out.splitlines()


def _tunnelctl(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TUNNELCTL, *args], check=False, capture_output=True, text=True,
                          timeout=timeout)


def assert_gone(name: str, interfaces: list[str], run_dir: Path) -> None:
    """Nothing of lab `name` is left: namespaces, wireguard-go processes, sockets, run dir."""
    assert [ns for ns in list_namespaces() if ns.startswith(f"tcl-{name}-")] == []
    procs = _wireguard_go_cmdlines()
    assert [p for p in procs if any(p.endswith(f" {i}") for i in interfaces)] == []
    assert [i for i in interfaces if (UAPI_DIR / f"{i}.sock").exists()] == []
    assert not run_dir.exists()


# -- repo generator (no root needed) ---------------------------------------------------------
def test_generated_repo_is_valid_and_keys_match(tmp_path: Path) -> None:
    gen = generate_repo(tmp_path / "gen", 30, gateway="lab-9")
    state = load_repo(gen.root)
    assert state.problems == ()
    assert len(state.tunnels) == 30 and set(state.gateways) == {"lab-9"}
    by_ident = {t.ident: t for t in state.tunnels}
    for g in gen.tunnels:
        assert wgkeys.public_key(g.private_key) == by_ident[g.ident].public_key
    assert len({t.subnet for t in state.tunnels}) == 30
    assert sum(1 for t in state.tunnels if t.lans) == 10  # every third tenant has a LAN
    assert sum(1 for t in state.tunnels if t.services == ("sip",)) == 6
    gw = state.gateways["lab-9"]
    assert gw.public_key == wgkeys.public_key(gen.gateway_private_key)
    assert not any(t.subnet.overlaps(gw.gateway_subnet) for t in state.tunnels)
    # Private keys never reach a tunnel file.
    text = "".join(p.read_text() for p in gen.root.rglob("*.yaml"))
    assert not any(g.private_key in text for g in gen.tunnels)
    assert gen.gateway_private_key not in text


def test_generated_tunnels_added_to_the_examples_overlap_nothing(tenants_repo: Path) -> None:
    before = load_repo(tenants_repo)
    added = add_generated_tunnels(tenants_repo, 40)
    after = load_repo(tenants_repo)
    assert after.problems == ()
    assert len(after.tunnels) == len(before.tunnels) + 40
    taken = [t.subnet for t in before.tunnels] + [lan for t in before.tunnels for lan in t.lans]
    reserved = [IPv4Network("10.10.10.0/24"), IPv4Network("10.20.0.0/30")]
    for g in added:
        assert not any(n.overlaps(x) for n in (g.subnet, *g.lans) for x in taken + reserved)


def test_demo_keys_match_the_shipped_public_keys() -> None:
    keys = demo_private_keys()
    state = load_repo(TENANTS)
    for t in state.tunnels:
        assert wgkeys.public_key(keys[t.ident]) == t.public_key
    gw = state.gateways["cloud-1"]
    assert wgkeys.public_key(keys["gateway/cloud-1"]) == gw.public_key


def test_layout_names_fit_and_links_never_overlap() -> None:
    hq = next(t for t in load_repo(TENANTS).tunnels if t.ident == "acme-voip/hq")
    last = plan_router("abcdef", MAX_ROUTERS - 1, hq)
    assert len(last.interface) <= 15 and last.netns == f"tcl-abcdef-r{MAX_ROUTERS - 1}"
    assert last.cloud_wan_address + 1 == last.wan_address
    assert str(last.wan_address) == "198.19.255.254"  # the very end of 198.18.0.0/15
    first = plan_router("abcdef", 0, hq)
    assert (str(first.cloud_wan_address), str(first.wan_address)) == ("198.18.0.1", "198.18.0.2")
    assert str(first.lan_address) == "192.168.10.1" and str(first.host_address) == "192.168.10.10"
    with pytest.raises(LayoutError):
        plan_router("abcdef", MAX_ROUTERS, hq)
    assert check_lab_name(new_lab_name())


def test_lab_names_must_fit_interface_names() -> None:
    with pytest.raises(LabError, match="1-6 lowercase"):
        Lab(TENANTS, name="much-too-long")


# -- building and removing labs ----------------------------------------------------------------
@pytest.mark.lab
def test_lab_builds_routers_and_leaves_nothing_behind(lab) -> None:  # type: ignore[no-untyped-def]
    built = lab(TENANTS)
    name, ifaces, run_dir = built.name, built.wg_interfaces, built.run_dir
    assert set(built.routers) == {"acme-voip/hq", "bluebird-telecom/main",
                                  "carrot-dental/clinic", "carrot-dental/branch"}
    assert set(built.namespaces) <= set(list_namespaces())
    assert all(uapi_socket_busy(i) for i in ifaces)
    assert all(len(i) <= 15 for i in ifaces)
    # The cloud interface is bare: no key, no peers, no address: configuring it is the engine's job.
    cloud = Runner().uapi(built.interface, "get=1\n")
    assert "public_key=" not in cloud and "private_key=" not in cloud
    assert "inet " not in Runner().run(["ip", "-n", built.netns, "addr", "show", built.interface]).stdout
    assert Runner(built.netns).run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
    # A router: peer = the cloud key, endpoint = the cloud's end of its link, AllowedIPs = only
    # the cloud tunnel address (never a public endpoint), a PSK, keepalive.
    hq = built.routers["acme-voip/hq"]
    dump = Runner(hq.netns).run(["wg", "show", hq.interface, "dump"]).stdout.splitlines()
    peer = dump[1].split("\t")
    hq_tunnel = next(t for t in load_repo(TENANTS).tunnels if t.ident == "acme-voip/hq")
    assert dump[0].split("\t")[1] == hq_tunnel.public_key
    assert peer[0] == built.cloud_public_key == wgkeys.public_key(
        (built.secret_dir / "private.key").read_text().strip())
    assert peer[1] != "(none)"  # preshared key present
    assert peer[2] == f"{hq.cloud_wan_address}:51821" and peer[3] == "10.20.0.1/32"
    assert peer[7] == "25"
    assert oct((built.secret_dir / "private.key").stat().st_mode & 0o777) == "0o600"
    assert oct((built.secret_dir / "psk.secret").stat().st_mode & 0o777) == "0o600"
    # The links work: LAN host -> router, router -> cloud's underlay address, infra -> cloud.
    assert ping(hq.host_netns, hq.lan_address)
    assert ping(hq.netns, hq.cloud_wan_address)
    assert built.infra is not None and ping(built.infra.netns, built.infra.cloud_address)
    # No private key or PSK on any command line of the processes the lab started.
    state_text = (built.run_dir / "lab.json").read_text()
    for key in (demo_private_keys()["acme-voip/hq"], demo_private_keys()["gateway/cloud-1"]):
        assert key not in state_text
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    assert key not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
                except OSError:
                    pass
    built.down()
    assert_gone(name, ifaces, run_dir)
    built.down()  # idempotent


@pytest.mark.lab
def test_two_labs_at_once_do_not_collide(lab) -> None:  # type: ignore[no-untyped-def]
    a = lab(TENANTS, routers=["acme-voip/hq"])
    b = lab(TENANTS, routers=["acme-voip/hq"])
    assert a.name != b.name
    assert not set(a.namespaces) & set(b.namespaces)
    assert not set(a.wg_interfaces) & set(b.wg_interfaces)
    ra, rb = a.routers["acme-voip/hq"], b.routers["acme-voip/hq"]
    # Same addresses, different namespaces: both work.
    assert ra.cloud_wan_address == rb.cloud_wan_address
    assert ping(ra.host_netns, ra.lan_address) and ping(rb.host_netns, rb.lan_address)
    name, ifaces, run_dir = a.name, a.wg_interfaces, a.run_dir
    a.down()
    assert_gone(name, ifaces, run_dir)
    assert all(uapi_socket_busy(i) for i in b.wg_interfaces)
    assert ping(rb.netns, rb.cloud_wan_address)


@pytest.mark.lab
def test_teardown_runs_when_the_body_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab(TENANTS, routers=1) as built:
        name, ifaces, run_dir = built.name, built.wg_interfaces, built.run_dir
        assert uapi_socket_busy(built.interface)
        raise RuntimeError("boom")
    assert_gone(name, ifaces, run_dir)


@pytest.mark.lab
def test_a_failed_build_removes_what_it_made() -> None:
    """A router key wireguard-go rejects makes up() fail half-way: nothing may stay behind."""
    broken = Lab(TENANTS, routers=["acme-voip/hq"], private_keys={"acme-voip/hq": "bm90LWEta2V5"})
    with pytest.raises(Exception, match="errno"):
        broken.up()
    assert_gone(broken.name, broken.wg_interfaces, broken.run_dir)


@pytest.mark.lab
def test_only_the_routers_asked_for_are_built(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gen = generate_repo(tmp_path / "gen", 200)
    started = time.monotonic()
    built = lab(gen.root, routers=3, private_keys=gen.private_keys, services=False)
    print(f"\nlab with 200 tenants in config, 3 routers: up in {time.monotonic() - started:.2f}s")
    assert len(built.routers) == 3
    assert len([ns for ns in built.namespaces if "-r" in ns]) == 3
    assert built.cloud_public_key == wgkeys.public_key(gen.gateway_private_key)


@pytest.mark.lab
def test_a_lab_dies_with_its_process_on_sigterm_and_survives_sigkill_for_lab_down(
        tmp_path: Path) -> None:
    """SIGTERM: the builder tears its lab down. SIGKILL: `tunnelctl lab down --name` can."""
    script = ("import sys, time\nfrom reconciler.lab import Lab\n"
              f"lab = Lab({str(TENANTS)!r}, routers=1).up()\n"
              "print(lab.name, ' '.join(lab.wg_interfaces), flush=True)\ntime.sleep(60)\n")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                                cwd=REPO_ROOT)
        assert proc.stdout is not None
        name, *ifaces = proc.stdout.readline().split()
        run_dir = Path("/run/tunnelctl-lab") / name
        assert (run_dir / "lab.json").exists() and all(uapi_socket_busy(i) for i in ifaces)
        proc.send_signal(sig)
        proc.wait(timeout=30)
        if sig == signal.SIGKILL:
            assert any(ns.startswith(f"tcl-{name}-") for ns in list_namespaces())
            res = _tunnelctl("lab", "down", "--name", name, timeout=60)
            assert res.returncode == 0, res.stderr
        assert_gone(name, ifaces, run_dir)


@pytest.mark.lab
def test_cli_up_status_down(tmp_path: Path) -> None:
    name = "c" + os.urandom(2).hex()
    iface = f"tc{name}c"
    up = _tunnelctl("lab", "up", "--name", name, "--repo", str(TENANTS),
                         "--routers", "2", "--interface", iface, timeout=60)
    try:
        assert up.returncode == 0, up.stderr
        assert f"tunnelctl apply --netns tcl-{name}-cloud --interface {iface}" in up.stdout
        assert "--secret-dir /run/tunnelctl-lab/" in up.stdout
        # The process that built it has exited; the lab is still there.
        st = _tunnelctl("lab", "status", "--name", name, "-o", "json", timeout=30)
        assert st.returncode == 0, st.stderr
        rep = json.loads(st.stdout)[0]
        assert rep["detached"] and all(rep["namespaces"].values())
        assert all(p["running"] for p in rep["processes"])
        assert [r["ident"] for r in rep["info"]["routers"]] == ["acme-voip/hq",
                                                                "bluebird-telecom/main"]
        again = _tunnelctl("lab", "up", "--name", name, "--interface", iface, timeout=60)
        assert again.returncode != 0 and "already up" in again.stderr
    finally:
        down = _tunnelctl("lab", "down", "--name", name, timeout=60)
    assert down.returncode == 0, down.stderr
    assert_gone(name, [iface, f"tc{name}r0", f"tc{name}r1"], Path("/run/tunnelctl-lab") / name)


@pytest.mark.lab
def test_lab_down_refuses_a_lab_whose_test_process_still_runs(lab) -> None:  # type: ignore[no-untyped-def]
    built = lab(TENANTS, routers=1, services=False)
    res = CliRunner().invoke(cli, ["lab", "down", "--name", built.name])
    assert res.exit_code != 0 and "belongs to running process" in res.output
    assert all(uapi_socket_busy(i) for i in built.wg_interfaces)


# -- IPv6 (dual-stack repos) ---------------------------------------------------------------------
def test_dual_stack_generated_repo_and_router_layout(tmp_path: Path) -> None:
    gen = generate_repo(tmp_path / "gen", 6, dual_stack=True, lan_every=2, v4_only_every=3)
    state = load_repo(gen.root)
    assert state.problems == ()
    gw = next(iter(state.gateways.values()))
    assert gw.dual_stack and gw.pool6 is not None and gw.gateway_subnet6 is not None
    by_ident = {t.ident: t for t in state.tunnels}
    v6 = [t for t in state.tunnels if t.subnet6 is not None]
    assert len(v6) == 4  # every third stays IPv4 only
    assert all(t.subnet6 in gw.pool6.subnets(new_prefix=64) for t in v6 if t.subnet6)
    assert not any(t.subnet6 and t.subnet6.overlaps(gw.gateway_subnet6) for t in v6)
    assert len({t.subnet6 for t in v6}) == 4
    # IPv6 LANs only for tenants with a LAN and a subnet6; none overlap the pool.
    assert all(bool(t.lans6) == bool(t.lans and t.subnet6) for t in state.tunnels)
    assert not any(lan.overlaps(gw.pool6) for t in state.tunnels for lan in t.lans6)
    for g in gen.tunnels:
        assert (g.subnet6, g.lans6) == (by_ident[g.ident].subnet6, by_ident[g.ident].lans6)
    with_lan6 = next(t for t in v6 if t.lans6)
    r = plan_router("abcdef", 3, with_lan6)
    assert with_lan6.subnet6 is not None
    assert r.address6 == with_lan6.subnet6.network_address + 2 and r.prefixlen6 == 64
    assert r.host_netns and r.lan_address6 == with_lan6.lans6[0].network_address + 1
    assert r.host_address6 == with_lan6.lans6[0].network_address + 0x10
    v4_only = plan_router("abcdef", 4, next(t for t in state.tunnels if t.subnet6 is None))
    assert v4_only.address6 is None and v4_only.host_address6 is None and v4_only.lans6 == ()


def test_an_ipv4_generated_repo_is_unchanged_by_dual_stack_support(tmp_path: Path) -> None:
    gen = generate_repo(tmp_path / "gen", 3, lan_every=1)
    gateway = (gen.root / "gateway.yaml").read_text()
    assert "address6" not in gateway and "pool6" not in gateway
    assert all("subnet6" not in t.path.read_text() and t.subnet6 is None for t in gen.tunnels)


@pytest.mark.lab
def test_dual_stack_lab_plumbing_works_without_the_engine(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Routers, LAN hosts, infra and the routed-range host get IPv6 that works at once (no
    tentative address); the cloud's tunnel interface stays bare: address6 is the engine's."""
    gen = generate_repo(tmp_path / "gen", 2, dual_stack=True, lan_every=1)
    built = lab(gen.root, private_keys=gen.private_keys)
    gw = built.gateway
    r = next(iter(built.routers.values()))
    assert r.address6 and r.host_netns and r.host_address6 and r.lan_address6
    dump = Runner(r.netns).run(["wg", "show", r.interface, "allowed-ips"]).stdout.split()
    assert dump[1:] == [f"{gw.address.ip}/32", f"{gw.address6.ip}/128", *map(str, gw.routed_ranges6)]
    assert "inet6" not in Runner().run(["ip", "-n", built.netns, "addr", "show", built.interface,
                                        "scope", "global"]).stdout
    for ns in built.namespaces:
        assert "tentative" not in Runner().run(["ip", "-n", ns, "-6", "addr"]).stdout, ns
    assert ping(r.host_netns, r.lan_address6)
    assert built.infra is not None and ping(built.infra.netns, built.infra.cloud_address6)
    assert built.routed is not None and built.routed.address6 and built.routed.cloud_address6
    assert ping(built.netns, built.routed.address6)
    assert ping(built.netns, built.infra.address6)
    sysctl = Runner(built.netns).run(["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).stdout
    assert sysctl.strip() == "1"


@pytest.mark.lab
def test_dead_daemons_names_a_probe_server_that_died(lab) -> None:  # type: ignore[no-untyped-def]
    built = lab(TENANTS, routers=1)
    assert built.dead_daemons() == []
    serve = next(p for p in built._live.state.processes if p.role == f"serve {built.netns}")
    os.kill(serve.pid, signal.SIGKILL)
    for _ in range(200):  # the kill lands asynchronously
        if built.dead_daemons():
            break
        time.sleep(0.01)
    assert built.dead_daemons() == [f"serve {built.netns}"]
