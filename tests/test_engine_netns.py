"""The engine against a real wireguard-go interface in a throwaway network namespace.

Each test gets its own namespace `tce-<hex6>` and interface `tce<hex6>` (the control socket
directory /var/run/wireguard is shared by every namespace, so the interface name is unique too),
a generated config repo, secret and config dirs in tmp_path. Teardown always stops the
wireguard-go it started and deletes the namespace. Traffic and isolation tests with customer
routers live with the lab (tests/test_lab*.py).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from reconciler.cli import main as cli_main
from reconciler.engine.cycle import HostTarget, ReconcileResult, reconcile
from reconciler.engine.hoststate import ROUTE_PROTO, ObservedState, Route
from reconciler.engine.observe import observe
from reconciler.engine.parsers import b64_to_hex, parse_wg_dump_secrets
from reconciler.engine.plan import (
    AddPeer,
    AddRoute,
    DeleteRoute,
    RemovePeer,
    ReplaceFirewall,
    SetInterface,
    UpdatePeer,
    WriteConfig,
)
from reconciler.engine.psk import create_host_secret
from reconciler.engine.runner import CommandError, Result, Runner
from reconciler.engine.wgkeys import keypair
from reconciler.repo.state import RepoState, load_repo

pytestmark = pytest.mark.lab

UAPI_DIR = Path("/var/run/wireguard")


# --------------------------------------------------------------------------- fixtures


@dataclass
class TenantRepo:
    """A config repo on disk: gateway.yaml + <org>/<name>.yaml, edited by the tests."""

    root: Path
    tunnels: dict[str, dict[str, Any]] = field(default_factory=dict)

    def write_gateway(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        gw = {"name": "gw-test", "interface": "wg1", "listen_port": 51821,
              "address": "10.20.0.1/16", "pool": "10.20.0.0/16", "allocation_prefix": 30,
              "endpoint": "203.0.113.10:51821", "mtu": 1420,
              "services": {"sip": {"proto": "udp", "ports": "5060,5080"},
                           "rtp": {"proto": "udp", "ports": "10000-20000"}},
              "default_services": ["sip", "rtp"]}
        (self.root / "gateway.yaml").write_text(yaml.safe_dump(gw))

    def put(self, i: int, **fields: Any) -> dict[str, Any]:
        org = f"org{i:03d}"
        base = 4 * (i + 1)
        data: dict[str, Any] = {
            "org": org, "name": "site", "gateway": "gw-test", "public_key": keypair()[1],
            "subnet": f"10.20.{base >> 8}.{base & 255}/30",
            "lans": [f"192.168.{i}.0/24"] if i % 3 == 0 else [],
            "status": "active", "persistent_keepalive": 25, "psk_rotation": 0}
        data.update(self.tunnels.get(f"{org}/site", {}))
        data.update(fields)
        self.tunnels[f"{org}/site"] = data
        path = self.root / org / "site.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(data))
        return data

    def remove(self, i: int) -> dict[str, Any]:
        (self.root / f"org{i:03d}" / "site.yaml").unlink()
        return self.tunnels.pop(f"org{i:03d}/site")

    def load(self) -> RepoState:
        repo = load_repo(self.root)
        assert repo.ok, repo.problems
        return repo


@dataclass
class EngineHost:
    ns: str
    ifname: str
    target: HostTarget
    repo: TenantRepo
    runner: Runner

    def sh(self, *argv: str, stdin: str | None = None, check: bool = True) -> str:
        proc = subprocess.run(["ip", "netns", "exec", self.ns, *argv], input=stdin, text=True,
                              capture_output=True, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} failed: {proc.stderr}")
        return proc.stdout

    def apply(self, runner: Runner | None = None, **kw: Any) -> ReconcileResult:
        return reconcile(self.repo.load(), self.target, runner=runner or Runner(netns=self.ns), **kw)

    def observe(self) -> ObservedState:
        return observe(Runner(netns=self.ns), self.ifname,
                       config_path=self.target.config_path(self.ifname))

    def secrets(self) -> tuple[str | None, dict[str, str]]:
        return parse_wg_dump_secrets(self.sh("wg", "show", self.ifname, "dump"))

    def nft(self, family: str, table: str) -> str:
        return self.sh("nft", "list", "table", family, table)

    def converged(self) -> ReconcileResult:
        """Apply, then prove a second cycle plans nothing and writes nothing."""
        first = self.apply()
        assert first.error is None, first.error
        assert first.applied and first.verified
        again = self.apply()
        assert again.plan.empty, again.plan.render_text()
        assert again.writes == 0 and again.verified and not again.applied
        return first


def start_wireguard_go(ns: str, ifname: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, GOMEMLIMIT="256MiB", WG_PROCESS_FOREGROUND="1")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "wireguard-go", ifname], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if (UAPI_DIR / f"{ifname}.sock").is_socket():
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"wireguard-go {ifname} exited with {proc.returncode}")
        time.sleep(0.02)
    raise RuntimeError(f"wireguard-go {ifname} did not create its control socket")


def stop_wireguard_go(proc: subprocess.Popen[bytes], ifname: str) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # lets it remove its socket
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    (UAPI_DIR / f"{ifname}.sock").unlink(missing_ok=True)  # ours by its unique name


@pytest.fixture
def host(tmp_path: Path) -> Iterator[EngineHost]:
    tag = secrets.token_hex(3)
    ns, ifname = f"tce-{tag}", f"tce{tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        proc = start_wireguard_go(ns, ifname)
        secret_dir = tmp_path / "secrets"
        secret_dir.mkdir(mode=0o700)
        key = secret_dir / "private.key"
        key.write_text(keypair()[0] + "\n")
        key.chmod(0o600)
        create_host_secret(secret_dir / "psk.secret")
        target = HostTarget(netns=ns, interface=ifname, secret_dir=secret_dir,
                            config_dir=tmp_path / "etc-wireguard", lock_dir=tmp_path / "run")
        repo = TenantRepo(tmp_path / "repo")
        repo.write_gateway()
        yield EngineHost(ns, ifname, target, repo, Runner(netns=ns))
    finally:
        if proc is not None:
            stop_wireguard_go(proc, ifname)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def populate(host: EngineHost, n: int) -> None:
    for i in range(1, n + 1):
        host.repo.put(i)


def peer_keys(result: ReconcileResult, kind: type) -> list[str]:
    out: list[str] = []
    for c in result.plan.of(kind):
        p = c.peer if isinstance(c, (AddPeer, RemovePeer)) else c.new
        assert p.public_key is not None
        out.append(p.public_key)
    return out


def fw_delta(result: ReconcileResult) -> tuple[set[Any], set[Any]]:
    (c,) = result.plan.of(ReplaceFirewall)
    assert c.old is not None and c.new is not None
    return set(c.new.elements - c.old.elements), set(c.old.elements - c.new.elements)


def elems(data: dict[str, Any], chain: str = "svc_rtp_sip") -> set[Any]:
    base = 4 * (int(data["org"][3:]) + 1)
    addr = f"10.20.{base >> 8}.{(base & 255) + 2}/32"
    return {("elem", "tenant_hosts", addr, f"jump {chain}"),
            *(("elem", "tenant_profiles", net, f"jump {chain}") for net in data["lans"])}


# ------------------------------------------------------------------------------ tests


def test_converge_from_empty_then_nothing(host: EngineHost) -> None:
    populate(host, 20)
    first = host.converged()
    s = first.plan.summary()
    assert s["peers"]["add"] == 20 and s["routes"]["add"] == 6
    assert s["firewall"]["add"] == 1 and s["config"]["add"] == 1 and s["interface"]["change"] == 1
    obs = host.observe()
    assert len(obs.peers) == 20
    assert obs.interface is not None
    assert (obs.interface.listen_port, obs.interface.address, obs.interface.up) == (
        51821, "10.20.0.1/16", True)
    assert {r.dst for r in obs.routes} == {f"192.168.{i}.0/24" for i in (3, 6, 9, 12, 15, 18)}
    assert all(r.proto == ROUTE_PROTO for r in obs.routes)
    conf = host.target.config_path(host.ifname)
    assert conf.stat().st_mode & 0o777 == 0o600
    # The config file is what a reboot restores: wg-quick can read it, and syncing the live
    # interface from it changes nothing.
    stripped = subprocess.run(["wg-quick", "strip", str(conf)], capture_output=True, text=True,
                              check=True).stdout
    assert stripped.count("[Peer]") == 20
    synced = conf.parent / "stripped.conf"
    synced.write_text(stripped)
    synced.chmod(0o600)
    host.sh("wg", "syncconf", host.ifname, str(synced))
    assert host.apply().plan.empty


def test_each_repo_change_plans_exactly_that(host: EngineHost) -> None:
    populate(host, 12)
    host.converged()

    # add one (with a LAN)
    new = host.repo.put(30)
    r = host.converged()
    assert peer_keys(r, AddPeer) == [new["public_key"]]
    assert [c.route for c in r.plan.of(AddRoute)] == [Route("192.168.30.0/24", host.ifname)]
    assert fw_delta(r) == (elems(new), set())
    assert {type(c) for c in r.plan} == {AddPeer, AddRoute, ReplaceFirewall, WriteConfig}

    # remove one
    gone = host.repo.remove(6)
    r = host.converged()
    assert peer_keys(r, RemovePeer) == [gone["public_key"]]
    assert [c.route for c in r.plan.of(DeleteRoute)] == [Route("192.168.6.0/24", host.ifname)]
    assert fw_delta(r) == (set(), elems(gone))
    assert {type(c) for c in r.plan} == {RemovePeer, DeleteRoute, ReplaceFirewall, WriteConfig}

    # change a LAN
    old = dict(host.repo.tunnels["org003/site"])
    changed = host.repo.put(3, lans=["192.168.103.0/24"])
    r = host.converged()
    (upd,) = r.plan.of(UpdatePeer)
    assert upd.new.public_key == changed["public_key"]
    assert [f[0] for f in upd.fields()] == ["allowed_ips"]
    assert [c.route.dst for c in r.plan.of(AddRoute)] == ["192.168.103.0/24"]
    assert [c.route.dst for c in r.plan.of(DeleteRoute)] == ["192.168.3.0/24"]
    assert fw_delta(r) == (elems(changed) - elems(old), elems(old) - elems(changed))

    # disable, then revoke
    disabled = host.repo.put(4, status="disabled")
    r = host.converged()
    assert peer_keys(r, RemovePeer) == [disabled["public_key"]] and not r.plan.of(AddPeer)
    revoked = host.repo.put(5, status="revoked", revoked_at="2026-01-02")
    r = host.converged()
    assert peer_keys(r, RemovePeer) == [revoked["public_key"]] and not r.plan.of(AddPeer)

    # rotate a PSK: one peer's PSK, nothing else but the config file
    before = host.secrets()[1]
    rotated = host.repo.put(7, psk_rotation=1)
    r = host.converged()
    assert {type(c) for c in r.plan} == {UpdatePeer, WriteConfig}
    (upd,) = r.plan.of(UpdatePeer)
    assert upd.new.public_key == rotated["public_key"]
    assert [f[0] for f in upd.fields()] == ["psk_digest"]
    after = host.secrets()[1]
    assert after[rotated["public_key"]] != before[rotated["public_key"]]
    assert {k: v for k, v in after.items() if k != rotated["public_key"]} == \
        {k: v for k, v in before.items() if k != rotated["public_key"]}
    assert len(host.observe().peers) == 12 + 1 - 3


def test_hand_made_drift_is_repaired(host: EngineHost) -> None:
    populate(host, 9)
    host.converged()
    keys = [host.repo.tunnels[f"org{i:03d}/site"]["public_key"] for i in (1, 2, 4)]
    conf = host.target.config_path(host.ifname)

    drifts: list[tuple[Sequence[str], type | tuple[type, ...]]] = [
        (["wg", "set", host.ifname, "peer", keys[0], "remove"], AddPeer),
        (["wg", "set", host.ifname, "peer", keys[1], "allowed-ips", "10.20.9.9/32"], UpdatePeer),
        (["wg", "set", host.ifname, "peer", keys[2], "preshared-key", "/dev/null"], UpdatePeer),
        (["ip", "route", "del", "192.168.3.0/24", "dev", host.ifname], AddRoute),
        (["nft", "flush", "table", "inet", "tunnelctl"], ReplaceFirewall),
        (["nft", "delete", "table", "inet", "tunnelctl"], ReplaceFirewall),
        (["nft", "delete", "element", "inet", "tunnelctl", "tenant_profiles",
          "{ 192.168.6.0/24 }"], ReplaceFirewall),
        (["nft", "delete", "element", "inet", "tunnelctl", "tenant_hosts",
          "{ 10.20.0.10 }"], ReplaceFirewall),
        (["nft", "add", "element", "inet", "tunnelctl", "tenant_hosts",
          "{ 10.20.9.9 : jump svc_rtp_sip }"], ReplaceFirewall),
        # The kernel drops a down link's routes: both come back.
        (["ip", "link", "set", host.ifname, "down"], (SetInterface, AddRoute, AddRoute, AddRoute)),
        (["wg", "set", host.ifname, "listen-port", "40000"], SetInterface),
    ]
    for argv, expected in drifts:
        host.sh(*argv)
        r = host.apply()
        assert r.error is None, (argv, r.error)
        want = list(expected) if isinstance(expected, tuple) else [expected]
        assert [type(c) for c in r.plan] == want, (argv, r.plan.render_text())
        assert host.apply().plan.empty, argv
    conf.unlink()
    r = host.apply()
    assert [type(c) for c in r.plan] == [WriteConfig] and conf.exists()
    # A route of ours left behind in another table is removed as well.
    host.sh("ip", "route", "add", "172.16.9.0/24", "dev", host.ifname, "proto", "252",
            "table", "100")
    r = host.apply()
    assert [c.route for c in r.plan.of(DeleteRoute)] == [Route("172.16.9.0/24", host.ifname,
                                                               "100")]
    assert host.apply().plan.empty


FOREIGN_NFT = """
table inet foreign {
    set blocked { type ipv4_addr; elements = { 192.0.2.7 }; }
    chain input {
        type filter hook input priority 0; policy accept;
        ip saddr @blocked counter drop comment "someone else's"
        tcp dport 22 accept
    }
}
table ip filter {
    chain INPUT {
        type filter hook input priority 0; policy accept;
        iifname "lo" accept
    }
    chain FORWARD {
        type filter hook forward priority 0; policy accept;
    }
}
"""


def _input_rules(host: EngineHost) -> list[dict[str, Any]]:
    listing = json.loads(host.sh("nft", "-j", "list", "table", "inet", "tunnelctl"))
    return [o["rule"] for o in listing["nftables"]
            if "rule" in o and o["rule"]["chain"] == "input"]


def test_hand_edited_rule_body_is_drift_even_with_its_comment(host: EngineHost) -> None:
    """The isolation rule's drop turned into accept, and a rule moved, each keeping its
    comment: plan sees the body, the next cycle reloads the table, the one after is a no-op."""
    host.sh("nft", "-f", "-", stdin=FOREIGN_NFT)
    foreign = (host.nft("inet", "foreign"), host.nft("ip", "filter"))
    populate(host, 6)
    host.converged()
    want = _input_rules(host)

    def accept_instead_of_drop() -> None:
        rule = next(r for r in _input_rules(host) if {"drop": None} in r["expr"])
        host.sh("nft", "replace", "rule", "inet", "tunnelctl", "input", "handle",
                str(rule["handle"]), "counter", "accept", "comment", f'"{rule["comment"]}"')

    def replies_rule_moved_last() -> None:  # delete + add: same body, same comment, new place
        rule = next(r for r in _input_rules(host) if "ct" in json.dumps(r["expr"]))
        host.sh("nft", "delete", "rule", "inet", "tunnelctl", "input", "handle",
                str(rule["handle"]))
        host.sh("nft", "add", "rule", "inet", "tunnelctl", "input", "ct", "state",
                "established,related", "accept", "comment", f'"{rule["comment"]}"')

    for edit in (accept_instead_of_drop, replies_rule_moved_last):
        edit()
        assert _input_rules(host) != want, edit.__name__
        seen = host.apply(dry_run=True)
        assert [type(c) for c in seen.plan] == [ReplaceFirewall], edit.__name__
        fixed = host.apply()
        assert fixed.error is None and fixed.verified, (edit.__name__, fixed.error)
        assert [type(c) for c in fixed.plan] == [ReplaceFirewall], edit.__name__
        now = _input_rules(host)
        assert [(r["expr"], r.get("comment")) for r in now] == \
            [(r["expr"], r.get("comment")) for r in want], edit.__name__
        third = host.apply()
        assert third.plan.empty and third.writes == 0, third.plan.render_text()
        assert (host.nft("inet", "foreign"), host.nft("ip", "filter")) == foreign


def test_foreign_routes_and_tables_survive_every_apply(host: EngineHost) -> None:
    host.sh("ip", "link", "set", host.ifname, "up")
    host.sh("ip", "addr", "add", "10.20.0.1/16", "dev", host.ifname)
    host.sh("ip", "route", "add", "192.168.200.0/24", "dev", host.ifname, "proto", "static")
    # A boot-time (wg-quick) route for a customer LAN is taken over by `route replace`.
    host.sh("ip", "route", "add", "192.168.3.0/24", "dev", host.ifname, "proto", "boot")
    host.sh("nft", "-f", "-", stdin=FOREIGN_NFT)
    foreign = (host.nft("inet", "foreign"), host.nft("ip", "filter"))

    def foreign_intact() -> None:
        assert (host.nft("inet", "foreign"), host.nft("ip", "filter")) == foreign
        assert "192.168.200.0/24 proto static" in host.sh("ip", "route", "show", "dev",
                                                           host.ifname)

    populate(host, 6)
    host.converged()
    foreign_intact()
    assert "192.168.3.0/24 proto 252" in host.sh("ip", "route", "show", "dev", host.ifname)
    host.repo.put(9)
    host.converged()
    host.repo.remove(3)
    host.converged()
    foreign_intact()
    host.sh("nft", "flush", "table", "inet", "tunnelctl")
    host.converged()
    foreign_intact()
    assert "192.168.3.0/24" not in host.sh("ip", "route", "show", "dev", host.ifname)


def test_a_tenant_lan_may_not_take_over_a_host_route(host: EngineHost) -> None:
    host.sh("ip", "link", "add", "hostbr0", "type", "veth", "peer", "name", "hostbr1")
    host.sh("ip", "link", "set", "hostbr0", "up")
    host.sh("ip", "route", "add", "172.17.0.0/16", "dev", "hostbr0")  # like Docker's bridge
    host.sh("ip", "route", "add", "192.168.50.0/24", "dev", "hostbr0", "table", "100")
    populate(host, 2)
    host.converged()
    routes = host.sh("ip", "route", "show", "table", "all")
    for lan, how, route in (("172.17.0.0/16", "equals", "172.17.0.0/16 dev hostbr0"),
                            ("192.168.50.128/25", "overlaps", "192.168.50.0/24 dev hostbr0")):
        host.repo.put(1, lans=[lan])
        refused = host.apply()
        assert refused.failed_step == "guard" and not refused.applied, refused.error
        assert refused.error is not None
        assert f"org001/site.yaml: LAN {lan} {how} the host route {route}" in refused.error
        assert host.sh("ip", "route", "show", "table", "all") == routes  # nothing touched
    host.repo.put(1, lans=["192.168.51.0/24"])
    host.converged()
    assert "172.17.0.0/16 dev hostbr0" in host.sh("ip", "route", "show")


class FailOnce(Runner):
    """A real Runner that fails the first call matching `needle` (argv or stdin)."""

    def __init__(self, netns: str, needle: str) -> None:
        super().__init__(netns=netns)
        self.needle = needle
        self.fired = False

    def run(self, argv: Sequence[str], *, stdin: str | bytes | None = None, check: bool = True,
            write: bool = False, timeout: float = 60.0,
            detach: bool = False) -> Result:
        text = " ".join(argv) + "\n" + (stdin if isinstance(stdin, str) else "")
        if not self.fired and write and self.needle in text:
            self.fired = True
            raise CommandError(list(argv), 2, "injected failure")
        return super().run(argv, stdin=stdin, check=check, write=write, timeout=timeout,
                           detach=detach)

    def uapi(self, interface: str, request: str, *, write: bool = False) -> str:
        if not self.fired and write and self.needle in request:
            self.fired = True
            raise CommandError(["uapi", interface], 1, "injected failure")
        return super().uapi(interface, request, write=write)


class SkipRouteAdds(Runner):
    """Claims success for route additions without running them: only verify can notice."""

    def run(self, argv: Sequence[str], *, stdin: str | bytes | None = None, check: bool = True,
            write: bool = False, timeout: float = 60.0,
            detach: bool = False) -> Result:
        if write and isinstance(stdin, str) and "route replace" in stdin:
            self.writes += 1
            return Result(tuple(argv), 0, "", "")
        return super().run(argv, stdin=stdin, check=check, write=write, timeout=timeout,
                           detach=detach)


def _host_picture(host: EngineHost) -> tuple[Any, ...]:
    obs = host.observe()
    conf = host.target.config_path(host.ifname)
    return (obs.interface, dict(obs.peers), obs.routes, obs.firewall, host.secrets(),
            host.nft("inet", "tunnelctl"), host.nft("inet", "foreign"),
            host.sh("ip", "route", "show", "table", "all", "dev", host.ifname),
            conf.read_bytes())


def _mixed_change(host: EngineHost) -> None:
    host.repo.put(30)  # add with LAN
    host.repo.remove(6)  # remove with LAN: a route delete in the removal phase
    host.repo.put(3, lans=["192.168.103.0/24"])  # change a LAN
    host.repo.put(2, psk_rotation=3)  # rotate a PSK


@pytest.mark.parametrize("needle,step", [("route replace", "routes"),
                                         ("allowed_ip=192.168.30.0/24", "peers"),
                                         ("nft -f", "firewall")])
def test_injected_failure_leaves_the_host_exactly_as_before(host: EngineHost, needle: str,
                                                            step: str) -> None:
    host.sh("nft", "-f", "-", stdin=FOREIGN_NFT)
    populate(host, 8)
    host.converged()
    before = _host_picture(host)
    _mixed_change(host)
    runner = FailOnce(host.ns, needle)
    r = host.apply(runner=runner)
    assert runner.fired
    assert r.failed_step == step and r.error and "injected failure" in r.error
    assert r.rolled_back and not r.applied and not r.verified
    assert _host_picture(host) == before
    # The next cycle, without the fault, converges to the new state.
    host.converged()


def test_verify_failure_rolls_back(host: EngineHost) -> None:
    host.sh("nft", "-f", "-", stdin=FOREIGN_NFT)
    populate(host, 4)
    host.converged()
    before = _host_picture(host)
    host.repo.put(9)
    r = host.apply(runner=SkipRouteAdds(netns=host.ns))
    assert r.failed_step == "verify" and r.rolled_back
    assert r.error is not None and "192.168.9.0/24" in r.error
    assert _host_picture(host) == before


def test_missing_interface_is_a_clear_error(host: EngineHost, tmp_path: Path) -> None:
    populate(host, 2)
    target = HostTarget(netns=host.ns, interface="tcenothere", secret_dir=host.target.secret_dir,
                        config_dir=tmp_path / "c2", lock_dir=tmp_path / "l2")
    runner = Runner(netns=host.ns)
    r = reconcile(host.repo.load(), target, runner=runner)
    assert r.failed_step == "observe" and r.writes == 0
    assert r.error == (f"interface tcenothere not found in netns {host.ns}; run `tunnelctl "
                       "bootstrap` or `tunnelctl lab up`")


def test_lock_excludes_a_second_apply_and_dies_with_its_holder(host: EngineHost) -> None:
    populate(host, 2)
    lock = host.target.lock_path(host.ifname)
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)\n")],
        stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        target = HostTarget(**{**host.target.__dict__, "lock_timeout": 0.3})
        r = reconcile(host.repo.load(), target, runner=Runner(netns=host.ns))
        assert r.failed_step == "lock" and r.writes == 0 and "holds" in (r.error or "")
        # A dry run (plan) does not need the lock.
        assert reconcile(host.repo.load(), target, dry_run=True).failed_step is None
        holder.kill()  # killed, not cleaned up: the kernel releases the flock
        holder.wait()
        r = reconcile(host.repo.load(), target, runner=Runner(netns=host.ns))
        assert r.error is None and r.applied
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_cli_plan_apply_exit_codes_and_json(host: EngineHost) -> None:
    populate(host, 3)
    t = host.target
    args = [str(host.repo.root), "--netns", host.ns, "--interface", host.ifname,
            "--secret-dir", str(t.secret_dir), "--config-dir", str(t.config_dir)]
    cli = CliRunner()
    res = cli.invoke(cli_main, ["plan", *args, "--detailed-exitcode"])
    assert res.exit_code == 2, res.output
    assert "Plan: " in res.output and "+ peer org001/site" in res.output
    plan_output = res.output
    res = cli.invoke(cli_main, ["apply", *args, "--dry-run", "--detailed-exitcode"])
    assert res.exit_code == 2 and host.observe().peers == {}
    # The plan, unchanged, then the exact commands apply would run, secrets redacted.
    assert res.output.startswith(plan_output) and "Commands" not in plan_output
    dry = res.output[len(plan_output):]
    assert "Commands apply would run (secrets redacted):" in dry
    assert f"[peers] uapi {host.ifname} (control socket)" in dry
    assert "[firewall] nft -f -" in dry and "[routes] ip -batch -" in dry
    assert f"[config] write {t.config_dir / (host.ifname + '.conf')} (mode 0600)" in dry
    assert "preshared_key=(redacted)" in dry and "PrivateKey = (redacted)" in dry
    res = cli.invoke(cli_main, ["apply", *args, "-o", "json", "--detailed-exitcode"])
    assert res.exit_code == 2, res.output
    import json

    data = json.loads(res.output)
    assert data["applied"] and data["verified"] and data["plan"]["summary"]["peers"]["add"] == 3
    psk_secret = (t.secret_dir / "psk.secret").read_text().strip()
    assert psk_secret not in res.output and (t.secret_dir / "private.key").read_text().strip() \
        not in res.output
    priv, psks = host.secrets()  # now applied: none of them was in the dry run's output
    for key in [k for k in (priv, *psks.values()) if k]:
        assert key not in dry and b64_to_hex(key) not in dry
    res = cli.invoke(cli_main, ["plan", *args, "--detailed-exitcode"])
    assert res.exit_code == 0 and "No changes" in res.output
    # A broken file: every problem printed with file:line:col, exit 1, host untouched.
    (host.repo.root / "org001" / "site.yaml").write_text("org: org001\nname: site\nsubnet: nope\n")
    before = host.observe()
    res = cli.invoke(cli_main, ["apply", *args])
    assert res.exit_code == 1
    assert "org001/site.yaml:" in res.output and "the host was not touched" in res.output
    after = host.observe()
    assert (after.peers, after.routes, after.firewall) == (before.peers, before.routes,
                                                           before.firewall)


def test_a_hand_apply_has_the_services_guards(host: EngineHost, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    state_dir = tmp_path / "state"
    monkeypatch.setenv("TUNNELCTL_STATE_DIR", str(state_dir))
    populate(host, 4)
    t = host.target
    args = [str(host.repo.root), "--netns", host.ns, "--interface", host.ifname,
            "--secret-dir", str(t.secret_dir), "--config-dir", str(t.config_dir)]
    cli = CliRunner()
    assert cli.invoke(cli_main, ["apply", *args]).exit_code == 0  # no service state yet
    for i in (1, 2, 3):  # 3 of 4 tunnels: more than the default share of 0.5
        host.repo.remove(i)
    res = cli.invoke(cli_main, ["apply", *args])
    assert res.exit_code == 1 and "removal" in res.output.lower(), res.output
    assert len(host.observe().peers) == 4
    res = cli.invoke(cli_main, ["apply", *args, "--force"])
    assert res.exit_code == 0 and len(host.observe().peers) == 1, res.output
    # The service applied a commit: this tree (not even a git checkout) may not undo it.
    state_dir.mkdir(exist_ok=True)
    (state_dir / "state.json").write_text(json.dumps(
        {"applied": {"commit": "a" * 40, "at": 0.0, "subject": "newer"}}))
    host.repo.put(7)
    res = cli.invoke(cli_main, ["apply", *args])
    assert res.exit_code == 1 and "not in a git checkout" in res.output, res.output
    assert len(host.observe().peers) == 1
    assert cli.invoke(cli_main, ["apply", *args, "--force"]).exit_code == 0
    assert len(host.observe().peers) == 2


class NoUapi(Runner):
    """Pretends the interface has no control socket (as with kernel WireGuard): `wg set` path."""

    def has_uapi(self, interface: str) -> bool:
        return False


def test_wg_set_path_without_control_socket(host: EngineHost) -> None:
    populate(host, 10)
    runners = [NoUapi(netns=host.ns) for _ in range(3)]
    r = host.apply(runner=runners[0])
    assert r.applied and r.verified, r.error
    host.repo.put(2, psk_rotation=1, persistent_keepalive=0)
    host.repo.remove(3)
    host.repo.put(4, lans=["192.168.44.0/24"])
    r = host.apply(runner=runners[1])
    assert r.applied and r.verified, r.error
    assert {type(c) for c in r.plan} == {UpdatePeer, RemovePeer, AddRoute, DeleteRoute,
                                         ReplaceFirewall, WriteConfig}
    again = host.apply(runner=runners[2])
    assert again.plan.empty and again.writes == 0
    # Neither the private key nor any PSK ever appeared in a command line.
    priv, psks = host.secrets()
    keys = [priv, *psks.values()]
    assert len(keys) == 10
    for runner in runners[:2]:
        assert any(argv[4:6] == ("wg", "set") for argv in runner.log)
    for runner in runners:
        for argv in runner.log:
            line = " ".join(argv)
            assert not any(k and k in line for k in keys), argv
