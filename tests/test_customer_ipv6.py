"""IPv6 in every customer config format: a tunnel with subnet6 on a dual-stack gateway gets both
families (wg-quick/awg-quick, QR, RouterOS, GDMS), judged by the real `wg-quick strip` and one
real `wg-quick up` in a throwaway namespace; every IPv4-only render stays byte for byte what it
was before IPv6 existed (golden files written before the templates changed).
Regenerate the golden files after an intended change with:
UPDATE_GOLDEN=1 pytest tests/test_customer_ipv6.py
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
from dataclasses import replace
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from pathlib import Path

import pytest
from click.testing import CliRunner
from customer_kit import GATEWAY6, dual_stack_repo
from test_amneziawg import block as awg_block
from test_customer_config import wg_quick_strip

from reconciler.cli import main
from reconciler.lab import demo_private_keys
from reconciler.operator import customer_config as cc
from reconciler.repo.model import Gateway
from reconciler.repo.state import load_repo

ROOT = Path(__file__).resolve().parent.parent
TENANTS = ROOT / "tenants"
GOLDEN = Path(__file__).resolve().parent / "golden" / "customer"
V4_TUNNELS = ("acme-voip/hq", "bluebird-telecom/main", "carrot-dental/clinic")
HOST_SECRET = bytes(range(32))  # conftest's secret_dir holds the same
AWG_BLOCK = awg_block()


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file"


def every_format(config: cc.CustomerConfig) -> str:
    """All text formats and the QR's compact text of one config, in one file."""
    parts = [(fmt, cc.render(config, fmt)) for fmt in cc.TEXT_FORMATS]
    parts.append(("qr (compact wg-quick)", cc.render(config, "wg-quick", compact=True)))
    return "".join(f"==== {name} ====\n{text}" for name, text in parts)


def edit_gateway(repo: Path, extra: str) -> None:
    gw = repo / "gateway.yaml"
    gw.write_text(gw.read_text() + extra)


@pytest.fixture
def v4_routed_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "v4repo"
    shutil.copytree(TENANTS, repo)
    edit_gateway(repo, "routed_ranges: [172.31.5.0/24]\n")
    return repo


@pytest.mark.parametrize("ident", V4_TUNNELS)
def test_ipv4_only_tunnels_render_as_before(secret_dir: Path, ident: str) -> None:
    config = cc.load(TENANTS, ident, secret_dir=secret_dir)
    golden(f"v4-{ident.replace('/', '-')}.txt", every_format(config))


def test_ipv4_only_tunnel_with_routed_ranges_renders_as_before(secret_dir: Path,
                                                               v4_routed_repo: Path) -> None:
    config = cc.load(v4_routed_repo, "acme-voip/hq", secret_dir=secret_dir)
    golden("v4-routed-acme-voip-hq.txt", every_format(config))


# ---- dual stack -----------------------------------------------------------------------------


@pytest.fixture
def dual_repo(tmp_path: Path) -> Path:
    return dual_stack_repo(tmp_path / "dual")


def test_dual_stack_values(secret_dir: Path, dual_repo: Path) -> None:
    config = cc.load(dual_repo, "acme-voip/hq", secret_dir=secret_dir)
    assert config.customer_address == IPv4Interface("10.20.0.6/30")  # IPv4 unchanged
    assert config.customer_address6 == IPv6Interface("fd42:4242:1:5::2/64")
    assert config.cloud_address6 == IPv6Address("fd42:4242:1::1")
    assert config.allowed_ips == (IPv4Network("10.20.0.1/32"),)
    assert config.allowed_ips6 == (IPv6Network("fd42:4242:1::1/128"),
                                   IPv6Network("fd42:4242:ff00::/64"))
    assert config.peer_allowed_ips == (*config.allowed_ips, *config.allowed_ips6)
    assert config.lans6 == (IPv6Network("fd99:10::/64"),)


@pytest.mark.parametrize("fmt,ext", [("wg-quick", "conf"), ("mikrotik", "rsc"), ("gdms", "txt")])
def test_dual_stack_golden_per_format(secret_dir: Path, dual_repo: Path, fmt: str,
                                      ext: str) -> None:
    config = cc.load(dual_repo, "acme-voip/hq", secret_dir=secret_dir)
    golden(f"dual-acme-voip-hq.{ext}", cc.render(config, fmt))


def test_dual_stack_without_ipv6_lans_golden(secret_dir: Path, dual_repo: Path) -> None:
    config = cc.load(dual_repo, "bluebird-telecom/main", secret_dir=secret_dir)
    assert config.lans6 == () and config.customer_address6 is not None
    golden("dual-bluebird-telecom-main.txt", every_format(config))


def test_tunnel_without_subnet6_on_a_dual_stack_gateway_renders_as_before(
        secret_dir: Path, dual_repo: Path) -> None:
    config = cc.load(dual_repo, "carrot-dental/clinic", secret_dir=secret_dir)
    assert config.customer_address6 is None and config.allowed_ips6 == ()
    golden("v4-carrot-dental-clinic.txt", every_format(config))  # the IPv4-only golden file


def test_subnet6_on_an_ipv4_only_gateway_is_ignored(secret_dir: Path, tmp_path: Path) -> None:
    """Whatever the repo rules say about such a file, the customer side never gets IPv6 the
    gateway does not have."""
    state = load_repo(dual_stack_repo(tmp_path / "dual"))
    tunnel = next(t for t in state.tunnels if t.ident == "acme-voip/hq")
    v4_gateway = load_repo(TENANTS).gateways["cloud-1"]
    config = cc.build(tunnel, v4_gateway, HOST_SECRET, v4_gateway.public_key or "")
    assert config.customer_address6 is None and config.peer_allowed_ips == config.allowed_ips


def test_wg_quick_strip_and_quick_parts(secret_dir: Path, dual_repo: Path, tmp_path: Path) -> None:
    config = cc.load(dual_repo, "acme-voip/hq", secret_dir=secret_dir)
    text = cc.render(config, "wg-quick")
    assert "Address = 10.20.0.6/30, fd42:4242:1:5::2/64\n" in text
    parts = wg_quick_strip(text, tmp_path)
    assert parts.addresses == (IPv4Interface("10.20.0.6/30"), IPv6Interface("fd42:4242:1:5::2/64"))
    peer = dict(ln.split(" = ", 1) for ln in parts.setconf.splitlines() if " = " in ln)
    assert peer["AllowedIPs"] == "10.20.0.1/32, fd42:4242:1::1/128, fd42:4242:ff00::/64"
    assert peer["Endpoint"] == "203.0.113.10:51821"
    compact = wg_quick_strip(cc.render(config, "wg-quick", compact=True), tmp_path)
    assert compact.addresses == parts.addresses
    assert [ln for ln in compact.setconf.splitlines() if ln and not ln.startswith("#")] == \
        [ln for ln in parts.setconf.splitlines() if ln and not ln.startswith("#")]


def test_qr_decodes_to_both_addresses(secret_dir: Path, dual_repo: Path, tmp_path: Path) -> None:
    config = cc.load(dual_repo, "acme-voip/hq", secret_dir=secret_dir)
    private = demo_private_keys()["acme-voip/hq"]
    png = tmp_path / "qr.png"
    png.write_bytes(cc.render_qr(config, private_key=private).png)
    decoded = subprocess.run(["zbarimg", "-q", "--raw", str(png)], capture_output=True,
                             text=True, check=True).stdout.rstrip("\n")
    section = cc.interface_section(decoded)
    assert section["Address"] == "10.20.0.6/30, fd42:4242:1:5::2/64"
    assert section["PrivateKey"] == private
    assert "AllowedIPs = 10.20.0.1/32, fd42:4242:1::1/128, fd42:4242:ff00::/64" in decoded
    assert decoded == cc.render(config, "wg-quick", compact=True,
                                private_key=private).rstrip("\n")


def test_routeros_ipv6_lines(secret_dir: Path, dual_repo: Path) -> None:
    config = cc.load(dual_repo, "acme-voip/hq", secret_dir=secret_dir)
    rsc = cc.render(config, "mikrotik")
    assert rsc.count("allowed-address=10.20.0.1/32,fd42:4242:1::1/128,fd42:4242:ff00::/64 ") == 2
    assert ('/ipv6 address add interface="wg-cloud-1" comment="tunnelctl acme-voip/hq" '
            'address=fd42:4242:1:5::2/64 advertise=no') in rsc
    for net in ("fd42:4242:1::1/128", "fd42:4242:ff00::/64"):
        assert (f'/ipv6 route add dst-address={net} comment="tunnelctl cloud-1" '
                'gateway="wg-cloud-1"') in rsc
    # IPv4 routes stay IPv4: no IPv6 prefix under /ip route, none of IPv4 under /ipv6 route
    assert not re.search(r"/ip route \w+ dst-address=[0-9a-f]*:", rsc)
    assert not re.search(r"/ipv6 route \w+ dst-address=\d+\.", rsc)


def test_gdms_names_every_ipv6_value(secret_dir: Path, dual_repo: Path) -> None:
    config = cc.load(dual_repo, "acme-voip/hq", secret_dir=secret_dir)
    text = cc.render(config, "gdms")
    numbers = [int(m) for m in re.findall(r"^ (\d+)\. ", text, re.MULTILINE)]
    assert numbers == list(range(1, len(numbers) + 1))
    for value in ("IPv6 tunnel address, if the interface takes one: fd42:4242:1:5::2/64",
                  "Allowed IPs: 10.20.0.1/32, fd42:4242:1::1/128, fd42:4242:ff00::/64",
                  "the cloud answers at fd42:4242:1::1 too", "IPv6 LANs fd99:10::/64",
                  "leave every IPv6\nvalue out"):
        assert value in text, value


def test_amneziawg_dual_stack_is_an_awg_quick_file_with_both_addresses(
        secret_dir: Path, tmp_path: Path) -> None:
    repo = dual_stack_repo(tmp_path / "awg", gateway_extra=GATEWAY6 + AWG_BLOCK)
    config = cc.load(repo, "acme-voip/hq", secret_dir=secret_dir)
    for compact in (False, True):
        text = cc.render(config, "wg-quick", compact=compact)  # checks the obfuscation values
        section = cc.interface_section(text)
        assert section["Address"] == "10.20.0.6/30, fd42:4242:1:5::2/64" and section["Jc"] == "4"
    assert "awg-quick up wg-cloud-1" in cc.render(config, "wg-quick")


# ---- the routing-loop guard with an IPv6 endpoint --------------------------------------------


def _v6_endpoint_gateway(folder: Path, ranges6: tuple[str, ...]) -> Gateway:
    gw = load_repo(dual_stack_repo(folder / "r")).gateways["cloud-1"]
    return gw.model_copy(update={"endpoint": "[2001:db8::1]:51821",
                                 "routed_ranges6": tuple(IPv6Network(r) for r in ranges6)})


def test_ipv6_routed_range_covering_an_ipv6_endpoint_is_refused(secret_dir: Path,
                                                                tmp_path: Path) -> None:
    looped = _v6_endpoint_gateway(tmp_path, ("2001:db8::/32",))
    with pytest.raises(cc.CustomerConfigError,
                       match=r"2001:db8::/32 would cover the endpoint 2001:db8::1.*routed_ranges6"):
        cc.customer_allowed_ips6(looped)
    # Through the whole load too (the repo rules may refuse it first: either way it is refused).
    repo = dual_stack_repo(tmp_path / "dual", gateway_extra=(
        "address6: fd42:4242:1::1/48\npool6: fd42:4242:1::/48\nrouted_ranges6: [2001:db8::/32]\n"))
    gw = repo / "gateway.yaml"
    gw.write_text(gw.read_text().replace("endpoint: 203.0.113.10:51821",
                                         'endpoint: "[2001:db8::1]:51821"'))
    with pytest.raises(cc.CustomerConfigError, match="endpoint"):
        cc.load(repo, "acme-voip/hq", secret_dir=secret_dir)


def test_ipv6_endpoint_outside_the_ranges_renders(tmp_path: Path) -> None:
    gw = _v6_endpoint_gateway(tmp_path, ("fd42:4242:ff00::/64",))
    assert cc.customer_allowed_ips6(gw)[-1] == IPv6Network("fd42:4242:ff00::/64")
    # an IPv4 range never "covers" an IPv6 endpoint, nor the other way round
    assert cc.customer_allowed_ips(gw.model_copy(update={
        "routed_ranges": (IPv4Network("0.0.0.0/1"),)}))[-1] == IPv4Network("0.0.0.0/1")


@pytest.mark.parametrize("endpoint,leak", [
    ("[2001:db8::1]:51821", IPv6Network("2001:db8::/48")),
    ("203.0.113.10:51821", IPv4Network("203.0.113.0/24")),
])
def test_renderer_assertion_catches_an_endpoint_in_either_family(
        secret_dir: Path, dual_repo: Path, endpoint: str, leak: IPv4Network | IPv6Network) -> None:
    config = cc.load(dual_repo, "acme-voip/hq", secret_dir=secret_dir)
    host = endpoint.rpartition(":")[0].strip("[]")
    config = replace(config, endpoint=endpoint, endpoint_host=host)
    for fmt in cc.TEXT_FORMATS:
        cc.render(config, fmt)  # the endpoint itself is fine outside AllowedIPs
    if isinstance(leak, IPv6Network):
        looped = replace(config, allowed_ips6=(*config.allowed_ips6, leak))
    else:
        looped = replace(config, allowed_ips=(*config.allowed_ips, leak))
    for fmt in cc.TEXT_FORMATS:
        with pytest.raises(AssertionError, match=f"covers the endpoint {host}"):
            cc.render(looped, fmt)


# ---- a real `wg-quick up` of the dual-stack file ---------------------------------------------


def _wireguard_go_pids(interface: str) -> list[int]:
    """wireguard-go processes serving exactly this (unique, random) interface name."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"wireguard-go", interface.encode()]:
            pids.append(int(proc.name))
    return pids


@pytest.mark.lab
def test_wg_quick_up_gives_the_interface_both_families(secret_dir: Path, dual_repo: Path,
                                                         tmp_path: Path) -> None:
    ident = "acme-voip/hq"
    config = cc.load(dual_repo, ident, secret_dir=secret_dir)
    text = cc.render(config, "wg-quick", private_key=demo_private_keys()[ident])
    interface = f"wq{secrets.token_hex(4)}"  # wg-quick names the interface after the file
    netns = f"tctl-wq-{secrets.token_hex(4)}"
    conf = tmp_path / f"{interface}.conf"
    conf.write_text(text)
    conf.chmod(0o600)
    # No kernel module here: wg-quick falls back to this userspace implementation.
    env = {**os.environ, "WG_QUICK_USERSPACE_IMPLEMENTATION": "wireguard-go"}

    def in_ns(*argv: str, check: bool = True) -> str:
        return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True,
                              text=True, check=check, env=env).stdout

    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        in_ns("ip", "link", "set", "lo", "up")
        in_ns("wg-quick", "up", str(conf))
        addrs = json.loads(in_ns("ip", "-j", "address", "show", "dev", interface))
        got = {f"{a['local']}/{a['prefixlen']}" for a in addrs[0]["addr_info"]
               if a.get("scope") == "global"}
        assert got == {"10.20.0.6/30", "fd42:4242:1:5::2/64"}
        assert addrs[0]["mtu"] == 1420
        routes = {r["dst"] for family in ("-4", "-6")
                  for r in json.loads(in_ns("ip", "-j", family, "route", "show", "dev", interface))}
        # both families' AllowedIPs became routes (a /32 and /128 show without their length)
        assert {"10.20.0.1", "fd42:4242:1::1", "fd42:4242:ff00::/64"} <= routes, routes
        assert {"10.20.0.4/30", "fd42:4242:1:5::/64"} <= routes  # the on-link prefixes
        allowed = in_ns("wg", "show", interface, "allowed-ips").split()
        assert allowed[1:] == ["10.20.0.1/32", "fd42:4242:1::1/128", "fd42:4242:ff00::/64"]
    finally:
        in_ns("wg-quick", "down", str(conf), check=False)
        for pid in _wireguard_go_pids(interface):  # only the one this test started
            os.kill(pid, signal.SIGTERM)
        subprocess.run(["ip", "netns", "del", netns], check=False)
        Path(f"/var/run/wireguard/{interface}.sock").unlink(missing_ok=True)


def test_cli_prints_both_families(secret_dir: Path, dual_repo: Path) -> None:
    res = CliRunner().invoke(main, ["customer-config", "acme-voip/hq", "-o", "mikrotik",
                                    "--repo", str(dual_repo), "--secret-dir", str(secret_dir)])
    assert res.exit_code == 0, res.output
    assert "address=fd42:4242:1:5::2/64 advertise=no" in res.output
    assert "allowed-address=10.20.0.1/32,fd42:4242:1::1/128,fd42:4242:ff00::/64" in res.output
    help_text = CliRunner().invoke(main, ["customer-config", "--help"]).output
    assert "subnet6" in help_text


@pytest.mark.lab
def test_dual_stack_file_brings_up_a_real_lab_router_over_both_families(
        secret_dir: Path, tmp_path: Path) -> None:
    """The generated file alone configures a lab router (everything the lab set is flushed
    first); the cloud then answers on its IPv4 and its IPv6 tunnel address, also to the phone
    on the router's IPv6 LAN."""
    from reconciler.engine.cycle import reconcile
    from reconciler.engine.runner import Runner
    from reconciler.lab import Lab, udp_probe

    ident = "acme-voip/hq"
    repo = dual_stack_repo(tmp_path / "dual")
    gw = repo / "gateway.yaml"  # in the lab, router 0 reaches the cloud at 198.18.0.1
    gw.write_text(gw.read_text().replace("endpoint: 203.0.113.10:51821",
                                         "endpoint: 198.18.0.1:51821"))
    with Lab(repo, routers=[ident], services=True) as lab:
        result = reconcile(load_repo(repo), lab.target())
        assert result.ok, result.error
        router = lab.routers[ident]
        assert router.index == 0 and str(router.cloud_wan_address) == "198.18.0.1"
        r = Runner(router.netns)
        r.run(["wg", "setconf", router.interface, "/dev/stdin"], stdin="[Interface]\n")
        r.run(["ip", "addr", "flush", "dev", router.interface])  # both families
        assert lab.latest_handshake(ident) == 0

        text = cc.render(cc.load(repo, ident, secret_dir=lab.secret_dir), "wg-quick",
                         private_key=demo_private_keys()[ident])
        parts = wg_quick_strip(text, tmp_path)  # what wg-quick does: strip, setconf, then ip
        assert {a.version for a in parts.addresses} == {4, 6}
        r.run(["wg", "setconf", router.interface, "/dev/stdin"], stdin=parts.setconf)
        batch = [f"addr add {a} dev {router.interface}" for a in parts.addresses]
        batch.append(f"link set {router.interface} mtu {parts.mtu} up")
        allowed = next(ln.split("=", 1)[1] for ln in parts.setconf.splitlines()
                       if ln.startswith("AllowedIPs"))
        batch += [f"route replace {n.strip()} dev {router.interface}" for n in allowed.split(",")]
        r.run(["ip", "-batch", "-"], stdin="".join(c + "\n" for c in batch))

        assert lab.wait_handshake(ident, timeout=10), "no handshake from the generated config"
        # from the tunnel addresses the file gave the router (its LAN addresses would pass too)
        assert udp_probe(router.netns, IPv4Address("10.20.0.1"), 5060,
                         src=IPv4Address("10.20.0.6"), timeout=2.0)
        assert udp_probe(router.netns, IPv6Address("fd42:4242:1::1"), 5060,
                         src=IPv6Address("fd42:4242:1:5::2"), timeout=2.0)
        assert router.host_netns is not None  # a phone on the routed IPv6 LAN gets through too
        assert udp_probe(router.host_netns, IPv6Address("fd42:4242:1::1"), 5060, timeout=2.0)
