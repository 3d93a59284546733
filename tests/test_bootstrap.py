"""Bootstrap: pure assessment units, then the real thing in throwaway namespaces.

The lab tests run `tunnelctl bootstrap` (the CLI, as an operator would) against a fresh
namespace with a unique interface name and a temporary secret directory, and compare the host
before and after to prove --check and --dry-run change nothing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.engine import wgkeys
from reconciler.engine.runner import Runner
from reconciler.operator import bootstrap as bs
from reconciler.repo.state import load_repo

ROOT = Path(__file__).resolve().parent.parent
TENANTS = ROOT / "tenants"


# ---- pure units ---------------------------------------------------------------------------------


def test_parse_ss_udp_ports() -> None:
    text = ("UNCONN 0 0 0.0.0.0:51821 0.0.0.0:*\n"
            "UNCONN 0 0 [::]:5060 [::]:*\n"
            "UNCONN 0 0 127.0.0.53%lo:53 0.0.0.0:*\n"
            "UNCONN 0 0 *:123 *:*\n")
    assert bs.parse_ss_udp_ports(text) == {51821, 5060, 53, 123}


def test_foreign_pool_routes_ignores_default_and_own_interface() -> None:
    routes = """[
      {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
      {"dst": "10.20.0.0/16", "dev": "wg1", "protocol": "kernel"},
      {"type": "local", "dst": "10.20.0.1", "dev": "wg1", "table": "local"},
      {"dst": "10.20.128.0/24", "dev": "eth1"},
      {"dst": "10.0.0.0/8", "dev": "docker0"},
      {"dst": "192.168.1.0/24", "dev": "eth0"}
    ]"""
    found = bs.foreign_pool_routes(routes, IPv4Network("10.20.0.0/16"), "wg1")
    assert found == ("10.20.128.0/24 dev eth1 table main", "10.0.0.0/8 dev docker0 table main")


def _facts(**kw: object) -> bs.HostFacts:
    absent = bs.SecretFile(Path("/x"), False, None, False)
    base: dict[str, object] = {
        "private_key": absent, "host_public_key": None, "psk_secret": absent, "link_exists": False,
        "is_wireguard": False, "uapi_socket_elsewhere": False, "listen_port": None,
        "interface_public_key": None, "peers": frozenset(), "addresses": (), "link_up": False,
        "udp_ports": frozenset(), "pool_routes": (), "firewall_table": False, "kernel_wireguard": False}
    base.update(kw)
    return bs.HostFacts(**base)  # type: ignore[arg-type]


def _target(tmp_path: Path, peers: frozenset[str] = frozenset()) -> bs.BootstrapTarget:
    gw = load_repo(TENANTS).gateways["cloud-1"]
    return bs.BootstrapTarget(gw, "wg1", tmp_path, peers)


def test_fresh_host_is_all_missing_and_plans_every_step(tmp_path: Path) -> None:
    target = _target(tmp_path)
    findings = bs.assess(_facts(), target)
    assert not bs.conflicts(findings)
    missing = {f.subject for f in findings if f.level == "missing"}
    assert missing == {"private key", "PSK host secret", "interface", "firewall"}
    steps = [s.description for s in bs.plan_steps(_facts(), target)]
    assert len(steps) == 7 and "generate the gateway key pair" in steps[0]


def test_port_taken_by_another_socket_is_a_conflict(tmp_path: Path) -> None:
    findings = bs.assess(_facts(udp_ports=frozenset({51821})), _target(tmp_path))
    assert [f.subject for f in bs.conflicts(findings)] == ["listen port"]


def test_port_held_by_our_own_interface_is_not_a_conflict(tmp_path: Path) -> None:
    facts = _facts(link_exists=True, is_wireguard=True, listen_port=51821,
                   udp_ports=frozenset({51821}), addresses=("10.20.0.1/16",), link_up=True,
                   firewall_table=True)
    assert not bs.conflicts(bs.assess(facts, _target(tmp_path)))


def test_foreign_peer_bad_mode_routed_pool_and_key_mismatch_are_conflicts(tmp_path: Path) -> None:
    priv = wgkeys.generate_private_key()
    facts = _facts(
        private_key=bs.SecretFile(tmp_path / "private.key", True, 0o600, True),
        host_public_key=wgkeys.public_key(priv),
        psk_secret=bs.SecretFile(tmp_path / "psk.secret", True, 0o644, True),
        link_exists=True, is_wireguard=True, listen_port=51821,
        interface_public_key=wgkeys.public_key(priv),
        peers=frozenset({"known=", "stranger="}), addresses=("10.20.0.1/16",), link_up=True,
        pool_routes=("10.20.5.0/24 dev eth1 table main",), firewall_table=True)
    found = {f.subject: f.message for f in bs.conflicts(bs.assess(facts, _target(
        tmp_path, frozenset({"known="}))))}
    assert set(found) == {"PSK host secret", "interface", "pool", "gateway file"}
    assert "stranger=" in found["interface"] and "known=" not in found["interface"]
    assert "0644" in found["PSK host secret"]


def test_prepared_host_plans_nothing(tmp_path: Path) -> None:
    priv = wgkeys.generate_private_key()
    ok = bs.SecretFile(tmp_path / "k", True, 0o600, True)
    facts = _facts(private_key=ok, psk_secret=ok, host_public_key=wgkeys.public_key(priv),
                   link_exists=True, is_wireguard=True, listen_port=51821,
                   interface_public_key=wgkeys.public_key(priv), addresses=("10.20.0.1/16",),
                   link_up=True, firewall_table=True)
    assert bs.plan_steps(facts, _target(tmp_path)) == ()


# ---- in a throwaway namespace -------------------------------------------------------------------


@dataclass
class Host:
    netns: str
    interface: str
    secret_dir: Path
    repo: Path

    def args(self, *extra: str) -> list[str]:
        return ["bootstrap", "--netns", self.netns, "--interface", self.interface,
                "--repo", str(self.repo), "--secret-dir", str(self.secret_dir), *extra]

    def snapshot(self) -> tuple[str, str, str, str, tuple[str, ...]]:
        """Everything bootstrap could change: links, addresses, nft ruleset, sockets, files."""
        r = Runner(self.netns)
        return (r.run(["ip", "-o", "link"]).stdout, r.run(["ip", "-o", "addr"]).stdout,
                r.run(["nft", "list", "ruleset"]).stdout, r.run(["ss", "-H", "-uln"]).stdout,
                tuple(sorted(os.listdir(self.secret_dir))) if self.secret_dir.exists() else ())


def _kill_namespace_processes(netns: str) -> None:
    pids = Runner().run(["ip", "netns", "pids", netns], check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}").exists()]
        time.sleep(0.05)
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    tag = secrets.token_hex(3)
    netns, interface = f"tcbs-{tag}", f"tcbs{tag}"
    repo = tmp_path / "repo"
    shutil.copytree(TENANTS, repo)
    # A fresh gateway: its public key is not known until bootstrap prints it.
    gw = repo / "gateway.yaml"
    gw.write_text("".join(ln for ln in gw.read_text().splitlines(keepends=True)
                          if not ln.startswith("public_key:")))
    Runner().run(["ip", "netns", "add", netns], write=True)
    try:
        Runner(netns).run(["ip", "link", "set", "lo", "up"], write=True)
        yield Host(netns, interface, tmp_path / "secrets", repo)
    finally:
        _kill_namespace_processes(netns)  # the wireguard-go bootstrap started, and probes
        Runner().run(["ip", "netns", "del", netns], check=False, write=True)
        Path(f"/var/run/wireguard/{interface}.sock").unlink(missing_ok=True)


def _cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


@pytest.mark.lab
def test_check_and_dry_run_on_a_fresh_namespace_change_nothing(host: Host) -> None:
    before = host.snapshot()
    code, out = _cli(*host.args("--check"))
    assert code == 0, out
    for piece in ("private.key does not exist", "psk.secret does not exist",
                  f"{host.interface} does not exist", "table inet tunnelctl does not exist"):
        assert piece in out
    assert host.snapshot() == before
    code, out = _cli(*host.args("--dry-run"))
    assert code == 0, out
    assert "Would do (dry run):" in out and f"create interface {host.interface}" in out
    assert host.snapshot() == before
    assert not host.secret_dir.exists()


@pytest.mark.lab
def test_real_run_prepares_the_host_and_a_second_run_changes_nothing(host: Host) -> None:
    code, out = _cli(*host.args())
    assert code == 0, out
    key_file, secret_file = host.secret_dir / "private.key", host.secret_dir / "psk.secret"
    for f in (key_file, secret_file):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    public = wgkeys.public_key(key_file.read_text().strip())
    assert f"Gateway public key: {public}" in out
    assert f"public_key: {public}" in out  # the gateway file lacks it: tell the operator
    assert key_file.read_text().strip() not in out  # the private key is never printed
    r = Runner(host.netns)
    dump = r.run(["wg", "show", host.interface, "dump"]).stdout.splitlines()[0].split("\t")
    assert dump[1] == public and dump[2] == "51821"
    assert "10.20.0.1/16" in r.run(["ip", "-o", "addr", "show", "dev", host.interface]).stdout
    assert "managed by tunnelctl" in r.run(["nft", "list", "table", "inet", "tunnelctl"]).stdout

    keys_before = (key_file.read_bytes(), secret_file.read_bytes())
    state_before = host.snapshot()
    target = bs.BootstrapTarget(load_repo(host.repo).gateways["cloud-1"], host.interface,
                                host.secret_dir, frozenset(), host.netns)
    runner = Runner(host.netns)
    report = bs.bootstrap(target, runner)
    assert report.executed and report.steps == () and runner.writes == 0
    assert not report.conflicts
    assert (key_file.read_bytes(), secret_file.read_bytes()) == keys_before
    assert host.snapshot() == state_before
    code, out = _cli(*host.args())
    assert code == 0 and "Nothing to do" in out


@pytest.mark.lab
def test_check_detects_a_port_taken_by_another_socket(host: Host) -> None:
    code = ("import socket,sys,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.bind(('0.0.0.0', 51821)); print('ready', flush=True); time.sleep(60)")
    squatter = subprocess.Popen(["ip", "netns", "exec", host.netns, sys.executable, "-c", code],
                                stdout=subprocess.PIPE)
    try:
        assert squatter.stdout is not None and squatter.stdout.readline().strip() == b"ready"
        before = host.snapshot()
        rc, out = _cli(*host.args("--check"))
        assert rc == 1, out
        assert "UDP 51821 is already taken by another socket" in out
        assert host.snapshot() == before
        rc, out = _cli(*host.args())  # a real run refuses to touch anything
        assert rc == 1 and "Refusing to change anything" in out
        assert host.snapshot() == before
    finally:
        squatter.kill()
        squatter.wait()


@pytest.mark.lab
def test_check_detects_a_foreign_peer_on_an_existing_interface(host: Host) -> None:
    assert _cli(*host.args())[0] == 0
    repo_key = "bCwbxjFFrcM5wf2QkY085qslCln34jXzku1QvIRAQns="  # bluebird-telecom/main
    stranger = wgkeys.keypair()[1]
    Runner(host.netns).run(["wg", "set", host.interface, "peer", repo_key, "allowed-ips",
                            "10.20.0.10/32", "peer", stranger, "allowed-ips", "10.20.9.2/32"],
                           write=True)
    rc, out = _cli(*host.args("--check"))
    assert rc == 1, out
    assert f"1 peer(s) not in the repository: {stranger}" in out
    assert repo_key not in out


# ---- dual stack --------------------------------------------------------------------------------


def test_addresses_include_global_ipv6_but_not_link_local() -> None:
    text = """[{"ifname": "wg1", "flags": ["POINTOPOINT", "NOARP", "UP"], "addr_info": [
      {"family": "inet", "local": "10.20.0.1", "prefixlen": 16, "scope": "global"},
      {"family": "inet6", "local": "fd42:4242:1::1", "prefixlen": 48, "scope": "global"},
      {"family": "inet6", "local": "fe80::1234", "prefixlen": 64, "scope": "link"}]}]"""
    assert bs.parse_addresses(text) == (("10.20.0.1/16", "fd42:4242:1::1/48"), True)


def test_foreign_routes_into_pool6_are_found_by_family() -> None:
    routes = """[
      {"dst": "fd42:4242:1:7::/64", "dev": "eth1", "table": "main"},
      {"dst": "fd42:4242:1::/48", "dev": "wg1"},
      {"dst": "fe80::/64", "dev": "eth0"},
      {"dst": "10.20.9.0/24", "dev": "eth2"}
    ]"""
    found = bs.foreign_pool_routes(routes, IPv4Network("10.20.0.0/16"), "wg1",
                                   IPv6Network("fd42:4242:1::/48"))
    assert found == ("fd42:4242:1:7::/64 dev eth1 table main", "10.20.9.0/24 dev eth2 table main")
    assert bs.foreign_pool_routes(routes, IPv4Network("10.20.0.0/16"), "wg1") == (
        "10.20.9.0/24 dev eth2 table main",)


def test_dual_stack_gateway_wants_and_adds_address6(tmp_path: Path) -> None:
    gw = load_repo(TENANTS).gateways["cloud-1"].model_copy(update={
        "address6": IPv6Interface("fd42:4242:1::1/48"), "pool6": IPv6Network("fd42:4242:1::/48")})
    target = bs.BootstrapTarget(gw, "wg1", tmp_path, frozenset())
    facts = _facts(link_exists=True, is_wireguard=True, listen_port=51821,
                   addresses=("10.20.0.1/16",), link_up=True, firewall_table=True)
    missing = [f.message for f in bs.assess(facts, target) if f.level == "missing"]
    assert "wg1 lacks fd42:4242:1::1/48" in missing
    steps = [s.description for s in bs.plan_steps(facts, target)]
    assert "add address fd42:4242:1::1/48 to wg1" in steps
    assert not any("10.20.0.1/16" in s for s in steps)
