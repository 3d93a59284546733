"""Apply stage without a host: a recording Runner shows order, batching and secret handling."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine.apply import PEERS_BESIDE_MIN, ApplyTarget, StepFailed, apply_plan
from reconciler.engine.commands import (
    Exec,
    KeyFile,
    UapiSet,
    WriteFile,
    commands_for,
    route_batch,
    uapi_peer_request,
)
from reconciler.engine.hoststate import ConfigFile, InterfaceConfig, Peer, Route, Secrets
from reconciler.engine.nft_transactions import firewall_transaction
from reconciler.engine.parsers import b64_to_hex, firewall_from_elements
from reconciler.engine.plan import (
    AddPeer,
    AddRoute,
    DeleteRoute,
    Plan,
    RemovePeer,
    ReplaceFirewall,
    SetInterface,
    UpdatePeer,
    WriteConfig,
)
from reconciler.engine.runner import CommandError, Result, Runner
from reconciler.engine.wgkeys import keypair

A, B, C, D = (keypair()[1] for _ in range(4))
PSK_A, PSK_C = keypair()[0], keypair()[0]  # any 32-byte base64 value does as a PSK
PRIV = keypair()[0]
FW = firewall_from_elements({("chain", "input")}, text="table inet tunnelctl {\n}\n")


class RecordingRunner(Runner):
    """Records every call instead of touching the host; can fail one kind of call."""

    def __init__(self, uapi_sock: bool = True, fail: str | None = None) -> None:
        super().__init__(netns=None)
        self.calls: list[tuple[str, Any]] = []
        self.uapi_sock = uapi_sock
        self.fail = fail
        self.seen_files: dict[str, tuple[int, int, str]] = {}
        self.written: dict[str, str] = {}

    def run(self, argv: Sequence[str], *, stdin: str | bytes | None = None, check: bool = True,
            write: bool = False, timeout: float = 60.0,
            detach: bool = False) -> Result:
        if write:
            self.writes += 1
        self.calls.append(("run", (tuple(argv), stdin)))
        for arg in argv:  # key files must exist, private, while wg runs
            if arg.startswith("/run/tunnelctl-") or "/tunnelctl-" in arg:
                p = Path(arg)
                self.seen_files[arg] = (stat.S_IMODE(p.stat().st_mode),
                                        stat.S_IMODE(p.parent.stat().st_mode), p.read_text())
        if self.fail and self.fail in " ".join(argv):
            raise CommandError(argv, 1, "injected failure")
        return Result(tuple(argv), 0, "", "")

    def uapi(self, interface: str, request: str, *, write: bool = False) -> str:
        if write:
            self.writes += 1
        self.calls.append(("uapi", request))
        if self.fail == "uapi":
            raise CommandError(["uapi"], 1, "injected failure")
        return ""

    def has_uapi(self, interface: str) -> bool:
        return self.uapi_sock

    def write_file(self, path: Path, content: str, mode: int = 0o600) -> None:
        self.writes += 1
        self.calls.append(("write", (str(path), mode)))
        self.written[str(path)] = content


def peer(key: str, *ips: str, psk: str | None = "d", ka: int = 25) -> Peer:
    return Peer(key, tuple(ips), psk, ka, owner=f"org/{key[:4]}")


SECRETS = Secrets(PRIV, {A: PSK_A, C: PSK_C})
OLD_IF = InterfaceConfig("wg1", 40000, None, None, 1420, False)
NEW_IF = InterfaceConfig("wg1", 51821, "pub", "10.20.0.1/16", 1412, True)
MIXED = Plan((
    SetInterface(OLD_IF, NEW_IF),
    ReplaceFirewall(None, FW),
    UpdatePeer(peer(C, "10.20.0.14/32", psk="old"), peer(C, "10.20.0.14/32", "192.168.30.0/24")),
    AddPeer(peer(A, "10.20.0.6/32", "192.168.10.0/24"), "org/a"),
    RemovePeer(peer(B, "10.20.0.10/32")),
    AddRoute(Route("192.168.10.0/24", "wg1")),
    AddRoute(Route("192.168.30.0/24", "wg1")),
    DeleteRoute(Route("192.168.20.0/24", "wg1")),
    WriteConfig(None, ConfigFile("/etc/wireguard/wg1.conf", "abc")),
))


def kinds(runner: RecordingRunner) -> list[str]:
    out = []
    for kind, payload in runner.calls:
        if kind == "uapi":
            out.append("uapi-remove" if "remove=true" in payload else
                       "uapi-key" if "private_key" in payload else "uapi-peers")
        elif kind == "run":
            argv, stdin = payload
            if argv[:2] == ("nft", "-f"):
                out.append("nft-elements" if (stdin or "").startswith("add element") else "nft")
            elif "route del" in (stdin or ""):
                out.append("route-del")
            elif "route replace" in (stdin or ""):
                out.append("route-add")
            elif "link set" in (stdin or ""):
                out.append("link")
            else:
                out.append(" ".join(argv[:2]))
        else:
            out.append("write")
    return out


def test_order_removals_reverse_then_adds() -> None:
    r = RecordingRunner()
    done = apply_plan(MIXED, ApplyTarget(r, "wg1", SECRETS, config_text="[Interface]\n"))
    assert kinds(r) == ["route-del", "uapi-remove", "nft", "uapi-key", "link", "uapi-peers",
                        "route-add", "write"]
    assert done == ["routes", "peers", "firewall", "interface", "peers", "routes", "config"]
    assert r.writes == 8
    assert ("write", ("/etc/wireguard/wg1.conf", 0o600)) in r.calls


def test_uapi_request_mentions_only_changed_peers_and_fields() -> None:
    upserts = [MIXED.changes[3], MIXED.changes[2]]
    req = uapi_peer_request(upserts, [B], SECRETS)  # type: ignore[arg-type]
    lines = req.splitlines()
    assert lines[0] == "set=1" and req.endswith("\n\n")
    assert lines[1:3] == [f"public_key={b64_to_hex(B)}", "remove=true"]
    a_at = lines.index(f"public_key={b64_to_hex(A)}")
    assert lines[a_at + 1:a_at + 6] == [f"preshared_key={b64_to_hex(PSK_A)}",
                                        "persistent_keepalive_interval=25",
                                        "replace_allowed_ips=true", "allowed_ip=10.20.0.6/32",
                                        "allowed_ip=192.168.10.0/24"]
    c_at = lines.index(f"public_key={b64_to_hex(C)}")
    # C changed its PSK digest and its AllowedIPs; keepalive did not change, so is not sent.
    assert lines[c_at + 1:-1] == ["update_only=true", f"preshared_key={b64_to_hex(PSK_C)}",
                                "replace_allowed_ips=true", "allowed_ip=10.20.0.14/32",
                                "allowed_ip=192.168.30.0/24"]
    assert D not in req and b64_to_hex(D) not in req


def test_psk_removal_sends_the_zero_key() -> None:
    req = uapi_peer_request([UpdatePeer(peer(A, "10.20.0.6/32"),
                                        peer(A, "10.20.0.6/32", psk=None))], [], SECRETS)
    assert "preshared_key=" + "0" * 64 in req


def test_missing_psk_is_an_error_not_a_silent_none() -> None:
    with pytest.raises(KeyError):
        uapi_peer_request([AddPeer(peer(D, "10.20.0.22/32"))], [], SECRETS)


def test_wg_set_fallback_is_one_call_with_psk_files_not_argv() -> None:
    r = RecordingRunner(uapi_sock=False)
    plan = Plan((AddPeer(peer(A, "10.20.0.6/32")), RemovePeer(peer(B)),
                 UpdatePeer(peer(C, "10.20.0.14/32", psk="x", ka=25),
                            peer(C, "10.20.0.14/32", psk=None, ka=0)),
                 SetInterface(OLD_IF, NEW_IF)))
    apply_plan(plan, ApplyTarget(r, "wg1", SECRETS))
    wg_calls = [p[0] for k, p in r.calls if k == "run" and p[0][0] == "wg"]
    assert len(wg_calls) == 3  # remove phase, private key + port, add phase
    everything = repr(r.calls)
    for secret in (PSK_A, PSK_C, PRIV):
        assert secret not in everything
    remove, key, add = wg_calls
    assert remove == ("wg", "set", "wg1", "peer", B, "remove")
    assert key[:4] == ("wg", "set", "wg1", "private-key") and key[-2:] == ("listen-port", "51821")
    assert add[3:6] == ("peer", A, "preshared-key")
    assert add[add.index(C) + 1:] == ("preshared-key", "/dev/null", "persistent-keepalive", "off")
    # The files were 0600 in a 0700 directory while wg ran, and are gone now.
    assert {m for m, _, _ in r.seen_files.values()} == {0o600}
    assert {d for _, d, _ in r.seen_files.values()} == {0o700}
    assert sorted(t.strip() for _, _, t in r.seen_files.values()) == sorted([PSK_A, PRIV])
    assert not any(os.path.exists(f) for f in r.seen_files)


def test_route_batch_replaces_and_deletes_only_our_protocol() -> None:
    text = route_batch([Route("192.168.10.0/24", "wg1")],
                       [Route("172.16.5.0/24", "wg1", "100")])
    assert text == ("route del 172.16.5.0/24 dev wg1 proto 252 table 100\n"
                    "route replace 192.168.10.0/24 dev wg1 proto 252\n")


def test_firewall_transaction_replaces_only_our_table() -> None:
    text = firewall_transaction(FW.text)
    assert text.splitlines()[:3] == ["table inet tunnelctl {}", "delete table inet tunnelctl",
                                     "table inet tunnelctl {"]
    assert "flush" not in text and "ruleset" not in text
    assert firewall_transaction(None) == "table inet tunnelctl {}\ndelete table inet tunnelctl\n"


@pytest.mark.parametrize("fail,step", [("nft", "firewall"), ("uapi", "peers"),
                                       ("-batch", "routes")])
def test_a_failure_names_its_step_and_stops(fail: str, step: str) -> None:
    r = RecordingRunner(fail=fail)
    plan = Plan((ReplaceFirewall(None, FW), AddPeer(peer(A, "10.20.0.6/32")),
                 AddRoute(Route("192.168.10.0/24", "wg1"))))
    with pytest.raises(StepFailed) as info:
        apply_plan(plan, ApplyTarget(r, "wg1", SECRETS))
    assert info.value.step == step
    assert kinds(r)[-1] == {"firewall": "nft", "peers": "uapi-peers", "routes": "route-add"}[step]


def test_empty_plan_makes_no_calls() -> None:
    r = RecordingRunner()
    assert apply_plan(Plan(), ApplyTarget(r, "wg1", SECRETS)) == []
    assert r.calls == [] and r.writes == 0


@pytest.mark.parametrize("uapi", [True, False])
def test_apply_runs_exactly_the_commands_commands_for_returns(uapi: bool) -> None:
    r = RecordingRunner(uapi_sock=uapi)
    config = "[Interface]\nPrivateKey = " + PRIV + "\n"
    done = apply_plan(MIXED, ApplyTarget(r, "wg1", SECRETS, config_text=config))
    steps = commands_for(MIXED, "wg1", SECRETS, uapi=uapi, config_text=config)
    assert done == [s.name for s in steps]
    expected: list[tuple[str, Any]] = []
    for command in (c for s in steps for c in s.commands):
        if isinstance(command, Exec):  # a key file is compared by what the file held
            expected.append(("run", (tuple(a.content if isinstance(a, KeyFile) else a
                                           for a in command.argv), command.stdin)))
        elif isinstance(command, UapiSet):
            expected.append(("uapi", command.request))
        else:
            assert isinstance(command, WriteFile)
            expected.append(("write", (command.path, command.mode)))
            assert r.written[command.path] == command.content
    ran = [(kind, (tuple(r.seen_files[a][2] if a in r.seen_files else a for a in payload[0]),
                   payload[1])) if kind == "run" else (kind, payload) for kind, payload in r.calls]
    assert ran == expected
    assert r.writes == len(expected)


def test_a_step_that_cannot_be_built_fails_in_its_place() -> None:
    r = RecordingRunner()
    plan = Plan((ReplaceFirewall(None, FW), AddPeer(peer(D, "10.20.0.22/32"))))  # D has no PSK
    with pytest.raises(StepFailed) as info:
        apply_plan(plan, ApplyTarget(r, "wg1", SECRETS))
    assert info.value.step == "peers" and isinstance(info.value.cause, KeyError)
    assert kinds(r) == ["nft"]  # the firewall ran first, as it would have


def test_an_apply_target_never_shows_its_keys() -> None:
    from reconciler.engine.apply import ApplyTarget
    from reconciler.engine.hoststate import Secrets
    from reconciler.engine.runner import Runner

    secret = "PrivateKey = c2VjcmV0LXByaXZhdGUta2V5LW9mLXRoZS1nYXRld2F5PT0="
    target = ApplyTarget(Runner(), "wg1", Secrets("priv-KEY", {"peer": "psk-KEY"}, secret),
                         config_text=secret)
    shown = repr(target) + str(target)
    assert "c2VjcmV0" not in shown and "priv-KEY" not in shown and "psk-KEY" not in shown


class SlowPeers(RecordingRunner):
    """The peers' UAPI set waits until the test lets it go (wireguard-go taking 16k peers);
    the route batch and the peers' set can be made to fail."""

    def __init__(self, fail_routes: bool = False, fail_peers: bool = False) -> None:
        super().__init__(fail="-batch" if fail_routes else None)
        self.fail_peers = fail_peers
        self.release = threading.Event()

    def uapi(self, interface: str, request: str, *, write: bool = False) -> str:
        if "public_key=" in request and "private_key" not in request:
            assert self.release.wait(10)
            if self.fail_peers:
                self.calls.append(("uapi", request))
                raise CommandError(["uapi"], 1, "injected failure")
        return super().uapi(interface, request, write=write)


# A table with tenant map elements: loaded from nothing by a big plan, it is split in two.
FW_TENANTS = firewall_from_elements(
    {("chain", "input"), ("elem", "tenant_hosts", "10.21.0.0/32", "jump svc_sip")},
    text="table inet tunnelctl {\n\tmap tenant_hosts {\n\t\ttype ipv4_addr : verdict\n"
         "\t\telements = {\n\t\t\t10.21.0.0 : jump svc_sip\n\t\t}\n\t}\n}\n")


def _big(n: int = PEERS_BESIDE_MIN) -> Plan:
    keys = [keypair()[1] for _ in range(n)]
    return Plan((ReplaceFirewall(None, FW_TENANTS),
                 *(AddPeer(peer(k, f"10.21.{i >> 8}.{i & 255}/32")) for i, k in enumerate(keys)),
                 AddRoute(Route("192.168.10.0/24", "wg1")),
                 WriteConfig(None, ConfigFile("/etc/wireguard/wg1.conf", "abc"))))


def _big_secrets(plan: Plan) -> Secrets:
    return Secrets(PRIV, {c.peer.public_key: PSK_A for c in plan.of(AddPeer)})


def test_a_big_plans_routes_and_config_run_beside_its_peers() -> None:
    plan = _big()
    r = SlowPeers()
    seen: list[str] = []
    result: list[list[str]] = []
    worker = threading.Thread(target=lambda: result.append(apply_plan(
        plan, ApplyTarget(r, "wg1", _big_secrets(plan), "conf"), seen.append)))
    worker.start()
    deadline = time.monotonic() + 10
    while "write" not in kinds(r):  # routes and config are done while the peers still run
        assert time.monotonic() < deadline, kinds(r)
        time.sleep(0.01)
    assert kinds(r) == ["nft", "nft-elements", "route-add", "write"] and "peers" not in seen
    r.release.set()
    worker.join(10)
    assert result == [["firewall", "peers", "elements", "routes", "config"]]
    assert kinds(r) == ["nft", "nft-elements", "route-add", "write", "uapi-peers"]
    assert seen[-1] == "peers"


def test_a_small_plan_keeps_the_order() -> None:
    plan = _big(PEERS_BESIDE_MIN - 4)
    r = RecordingRunner()
    apply_plan(plan, ApplyTarget(r, "wg1", _big_secrets(plan), "conf"))
    assert kinds(r) == ["nft", "uapi-peers", "route-add", "write"]  # and one table load


def test_the_peers_failure_is_reported_and_waited_for() -> None:
    plan = _big()
    both = SlowPeers(fail_routes=True, fail_peers=True)
    threading.Timer(0.3, both.release.set).start()
    with pytest.raises(StepFailed) as info:
        apply_plan(plan, ApplyTarget(both, "wg1", _big_secrets(plan), "conf"))
    assert info.value.step == "peers"  # both failed: the earlier step is the one named
    routes = SlowPeers(fail_routes=True)
    threading.Timer(0.3, routes.release.set).start()
    with pytest.raises(StepFailed) as info2:
        apply_plan(plan, ApplyTarget(routes, "wg1", _big_secrets(plan), "conf"))
    assert info2.value.step == "routes"
    assert kinds(routes)[-1] == "uapi-peers"  # the failed routes waited for the peers' end


class WaitsForPeerBuild(RecordingRunner):
    """The firewall's nft -f runs until the peers' request has been built (or 5 s pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.built = threading.Event()
        self.built_during_firewall = False

    def run(self, argv: Sequence[str], **kw: Any) -> Result:
        if argv[0] == "nft":
            self.built_during_firewall = self.built.wait(5)
        return super().run(argv, **kw)


def test_a_big_plans_peer_step_is_built_while_the_firewall_step_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from reconciler.engine import commands

    plan = _big()
    r = WaitsForPeerBuild()
    build = commands.uapi_peer_request

    def recorded(*a: Any, **kw: Any) -> str:
        try:
            return build(*a, **kw)
        finally:
            r.built.set()

    monkeypatch.setattr(commands, "uapi_peer_request", recorded)
    assert apply_plan(plan, ApplyTarget(r, "wg1", _big_secrets(plan), "conf")) == [
        "firewall", "peers", "elements", "routes", "config"]
    assert r.built_during_firewall
    assert sorted(kinds(r)) == ["nft", "nft-elements", "route-add", "uapi-peers", "write"]
    assert kinds(r)[0] == "nft"  # the structure before anything else


def test_a_big_plans_step_that_cannot_be_built_still_fails_in_its_place() -> None:
    plan = _big()
    broken = Plan((*plan.changes[:-2], AddPeer(peer(D, "10.20.0.22/32")), *plan.changes[-2:]))
    r = RecordingRunner()
    with pytest.raises(StepFailed) as info:
        apply_plan(broken, ApplyTarget(r, "wg1", _big_secrets(plan), "conf"))
    assert info.value.step == "peers" and isinstance(info.value.cause, KeyError)
    assert kinds(r) == ["nft"]  # built ahead, yet raised after the firewall ran, as before


def test_meanwhile_runs_once_here_while_the_peers_are_still_taken() -> None:
    plan = _big()
    r = SlowPeers()
    calls: list[tuple[str, list[str]]] = []

    def meanwhile() -> None:
        calls.append((threading.current_thread().name, kinds(r)))
        r.release.set()  # the peers finish only after this ran

    assert apply_plan(plan, ApplyTarget(r, "wg1", _big_secrets(plan), "conf"),
                      meanwhile=meanwhile)[-1] == "config"
    assert calls == [(threading.current_thread().name,
                      ["nft", "nft-elements", "route-add", "write"])]
    small = _big(PEERS_BESIDE_MIN - 4)
    seen: list[list[str]] = []
    r2 = RecordingRunner()
    apply_plan(small, ApplyTarget(r2, "wg1", _big_secrets(small), "conf"),
               meanwhile=lambda: seen.append(kinds(r2)))
    assert seen == [["nft", "uapi-peers", "route-add", "write"]]  # after the last step
    failing = RecordingRunner(fail="-batch")
    with pytest.raises(StepFailed):
        apply_plan(small, ApplyTarget(failing, "wg1", _big_secrets(small), "conf"),
                   meanwhile=lambda: seen.append(["called"]))
    assert seen[-1] != ["called"]
