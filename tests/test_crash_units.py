"""Crash-safety pieces without a host (issue 11): lock re-check, lock inheritance, children
dying with their parent, busy nft, checkpoint round trip, restore keys, conntrack filters."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.engine import checkpoint
from reconciler.engine.conntrack import matching_flows, shrunk_sources
from reconciler.engine.cycle import HostTarget, with_desired_secrets
from reconciler.engine.files import LockHeld, held_lock_fds, pid_lock
from reconciler.engine.hostboot import closed_table, persist_firewall, persisted_text
from reconciler.engine.hoststate import (
    TENANT_MAP,
    ConfigFile,
    Firewall,
    HostState,
    InterfaceConfig,
    ObservedState,
    Peer,
    Route,
    Secrets,
)
from reconciler.engine.observe import Snapshot
from reconciler.engine.plan import Plan, RemovePeer, ReplaceFirewall, plan
from reconciler.engine.psk import psk_digest
from reconciler.engine.runner import CommandError, Runner, nft_busy


def test_lock_is_rechecked_when_its_file_was_replaced(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with pid_lock(path, wait=1):
        assert held_lock_fds()
        path.unlink()  # a cleanup removed it while we hold it: a newcomer must not be fooled
        with pid_lock(path, wait=1):
            pass  # it locks the new file, which is what later holders will see
    assert not held_lock_fds()


def test_a_child_holds_the_lock_until_it_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    code = ("import sys; from pathlib import Path; from reconciler.engine.files import pid_lock; "
            "from reconciler.engine.runner import Runner\n"
            f"with pid_lock(Path({str(path)!r}), wait=1):\n"
            "    Runner().run(['sleep', '30'])\n")
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while not path.exists() or not path.read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        parent.kill()  # kill -9 of tunnelctl: its sleep child dies with it (PDEATHSIG)
        parent.wait()
        with pid_lock(path, wait=5):  # ...and then the lock is free
            pass
    finally:
        parent.kill()


def test_lock_wait_times_out_with_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with pid_lock(path, wait=1):
            held.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    try:
        with pytest.raises(LockHeld) as exc, pid_lock(path, wait=0.2):
            pass
        assert exc.value.holder == str(os.getpid())
    finally:
        release.set()
        t.join()


def test_busy_nft_is_recognised() -> None:
    msg = "netlink: Error: Could not process rule: No buffer space available"
    assert nft_busy(("ip", "netns", "exec", "ns", "nft", "-f", "-"), 1, msg)
    assert nft_busy(("nft", "-f", "-"), 1, "Error: Device or resource busy")
    assert not nft_busy(("nft", "-f", "-"), 1, "Error: syntax error")
    assert not nft_busy(("ip", "-batch", "-"), 1, msg)


def test_runner_retries_a_busy_command(tmp_path: Path) -> None:
    marker = tmp_path / "tries"
    script = tmp_path / "nft"
    script.write_text("#!/bin/sh\necho x >> " + str(marker) + "\n"
                      "[ $(wc -l < " + str(marker) + ") -ge 3 ] && exit 0\n"
                      "echo 'Error: No buffer space available' >&2; exit 1\n")
    script.chmod(0o755)
    res = Runner().run([str(script), "nft", "-f", "-"], write=True)
    assert res.returncode == 0 and len(marker.read_text().split()) == 3


def _snapshot() -> Snapshot:
    peer = Peer("K" * 43 + "=", ("10.20.0.6/32",), psk_digest("P" * 43 + "="), 25)
    fw = Firewall("inet", "tunnelctl", "abc", frozenset({("elem", TENANT_MAP, "10.20.0.6/32",
                                                          "jump svc_sip"), ("chain", "input")}))
    state = ObservedState(InterfaceConfig("wg1", 51821, "PUB", "10.20.0.1/16", 1420, True),
                          {peer.public_key: peer}, frozenset({Route("192.168.1.0/24", "wg1")}),
                          fw, ConfigFile("/etc/wireguard/wg1.conf",
                                              ConfigFile.digest_of(b"old file")))
    return Snapshot(state, Secrets("PRIV", {}), None, b"old file")


def test_checkpoint_round_trip_and_mode(tmp_path: Path) -> None:
    path = checkpoint.marker_path(tmp_path / "cp", "ns1", "wg1")
    snap = _snapshot()
    st = snap.state
    peer = next(iter(st.peers.values()))
    assert st.config is not None and st.interface is not None
    gone = HostState(replace(st.interface, listen_port=1), {}, frozenset(), None,
                     ConfigFile(st.config.path, "d2"))
    changes = plan(gone, st)  # removes the peer, the route and the table; rewrites the config
    snap = replace(snap, secrets=Secrets("PRIV", {peer.public_key: "P" * 43 + "="}),
                   firewall_text="table inet tunnelctl {}")
    inverse = checkpoint.Inverse.of(changes, snap)
    checkpoint.write(path, inverse, interface="wg1", netns="ns1",
                     config_path=Path("/x/wg1.conf"))
    assert path.stat().st_mode & 0o777 == 0o600
    assert checkpoint.config_copy_path(path).read_bytes() == b"old file"  # copied: no /x
    back = checkpoint.load(path)
    assert back is not None and back.interface == "wg1" and back.netns == "ns1"
    assert back.inverse == replace(inverse, secrets=back.inverse.secrets)
    assert back.inverse.secrets.private_key == "PRIV"
    assert back.inverse.secrets.psk(peer.public_key) == "P" * 43 + "="
    undone = back.inverse.over(ObservedState(gone.interface, {}, frozenset(), None, gone.config))
    assert undone.state == st and undone.config_content == b"old file"
    assert undone.firewall_text == "table inet tunnelctl {}"
    assert checkpoint.pending_in(tmp_path / "cp", "ns1") == [path]
    assert checkpoint.pending_in(tmp_path / "cp", None) == []
    checkpoint.clear(path)
    assert checkpoint.load(path) is None
    assert not checkpoint.config_copy_path(path).exists()


def test_checkpoint_keeps_the_old_config_as_a_link(tmp_path: Path) -> None:
    conf = tmp_path / "wg1.conf"
    conf.write_bytes(b"old file")
    snap = _snapshot()
    assert snap.state.config is not None
    changes = plan(replace(snap.state, config=ConfigFile(str(conf), "d2")),
                   replace(snap.state, config=ConfigFile(str(conf), "d1")))  # a wrong digest
    path = checkpoint.marker_path(tmp_path / "cp", None, "wg1")
    inverse = checkpoint.Inverse.of(changes, snap)
    checkpoint.write(path, inverse, interface="wg1", netns=None, config_path=conf)
    side = checkpoint.config_copy_path(path)
    assert side.stat().st_ino == conf.stat().st_ino  # no copy of a 2.9 MB file
    conf.with_name("new").write_bytes(b"new file")
    os.replace(conf.with_name("new"), conf)  # what atomic_write does
    with pytest.raises(ValueError, match="not the one replaced"):
        checkpoint.load(path)  # "d1" is not the digest of b"old file"
    good = replace(inverse, config=(ConfigFile(str(conf), ConfigFile.digest_of(b"old file")),))
    checkpoint.write(path, good, interface="wg1", netns=None, config_path=conf)
    back = checkpoint.load(path)
    assert back is not None and back.inverse.config_content == b"old file"


def test_restore_keys_are_completed_from_the_desired_ones() -> None:
    snap = _snapshot()
    key = next(iter(snap.state.peers))
    desired = HostState(snap.state.interface, {}, frozenset(), None)
    full = with_desired_secrets(snap, desired, Secrets("PRIV", {key: "P" * 43 + "="}))
    assert full.secrets.psk(key) == "P" * 43 + "="
    wrong = with_desired_secrets(snap, desired, Secrets("PRIV", {key: "Q" * 43 + "="}))
    assert wrong.secrets.psk(key) is None  # a different PSK is never put back
    right = Secrets("PRIV", {key: "P" * 43 + "="})
    assert with_desired_secrets(snap, desired, right, keys=[]).secrets.psk(key) is None
    assert with_desired_secrets(snap, desired, right, keys=[key]).secrets.psk(key) == "P" * 43 + "="


def test_host_target_keeps_locks_out_of_the_runtime_directory(tmp_path: Path) -> None:
    t = HostTarget()
    assert t.lock_path("wg1") == Path("/var/lib/tunnelctl/locks/wg1.lock")
    assert t.firewall_path == Path("/var/lib/tunnelctl/firewall/host.nft")
    lab = HostTarget(netns="ns", secret_dir=tmp_path / "secrets")
    assert lab.state_root == tmp_path / "state"


def test_persisted_table_is_written_once_and_read_back_by_fingerprint(tmp_path: Path) -> None:
    text = closed_table("wg1")
    path = tmp_path / "host.nft"
    assert persist_firewall(path, text) and not persist_firewall(path, text)
    assert path.stat().st_mode & 0o777 == 0o600
    assert persisted_text(path, "0") == text and persisted_text(path, "f00") is None
    assert "ct direction reply ct state established,related accept" in text


def test_conntrack_sources_of_shrunk_and_removed_tenants() -> None:
    def fw(*elems: tuple[str, str]) -> Firewall:
        return Firewall("inet", "tunnelctl", "x", frozenset(("elem", TENANT_MAP, k, v)
                                                            for k, v in elems))
    old = fw(("10.20.0.6/32", "jump svc_rtp_sip"), ("10.20.0.10/32", "jump svc_sip"),
             ("10.20.0.14/32", "jump svc_sip"))
    new = fw(("10.20.0.6/32", "jump svc_sip"), ("10.20.0.10/32", "jump svc_rtp_sip"))
    removed = RemovePeer(Peer("K", ("10.20.0.18/32", "192.168.5.0/24"), None, 0))
    got = shrunk_sources(Plan((ReplaceFirewall(old, new), removed)))
    # .6 lost rtp, .14 went away, .10 only grew; the removed peer's addresses.
    assert got == ["10.20.0.6/32", "10.20.0.14/32", "10.20.0.18/32", "192.168.5.0/24"]


def test_conntrack_listing_to_delete_filters() -> None:
    listing = (
        "udp      17 29 src=10.20.0.6 dst=10.20.0.1 sport=4000 dport=5060 [UNREPLIED] "
        "src=10.20.0.1 dst=10.20.0.6 sport=5060 dport=4000 mark=0 use=1\n"
        "tcp      6 431999 ESTABLISHED src=172.31.1.2 dst=172.31.1.1 sport=1 dport=22 "
        "src=172.31.1.1 dst=172.31.1.2 sport=22 dport=1 [ASSURED] mark=0 use=1\n"
        "icmp     1 29 src=10.10.10.5 dst=10.20.0.6 type=8 code=0 id=7 src=10.20.0.6 "
        "dst=10.10.10.5 type=0 code=0 id=7 mark=0 use=1\n")
    flows = matching_flows(listing, lambda a: a.startswith("10.20.0.6"))
    assert flows == [
        ("-f", "ipv4", "-p", "udp", "-s", "10.20.0.6", "-d", "10.20.0.1", "--sport", "4000",
         "--dport", "5060"),
        ("-f", "ipv4", "-p", "icmp", "-s", "10.10.10.5", "-d", "10.20.0.6")]


def test_children_fall_back_to_a_preexec_tether_where_setpriv_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A seccomp filter without @privileged refuses setpriv's capset (the boot units'): the
    probe says so once and children are tethered by a preexec_fn instead, still holding the
    locks; where setpriv works it starts them."""
    from reconciler.engine import runner as runner_module

    refused = tmp_path / "setpriv"
    refused.write_text("#!/bin/sh\necho 'setpriv: capset failed: Operation not permitted' >&2\n"
                       "exit 127\n")
    refused.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda _name: str(refused))
    runner_module.setpriv.cache_clear()
    try:
        argv, extra = runner_module._tethered(["true"])
        assert argv == ["true"] and "preexec_fn" in extra and "pass_fds" in extra
        assert Runner().run(["true"]).returncode == 0
    finally:
        monkeypatch.undo()
        runner_module.setpriv.cache_clear()
    argv, extra = runner_module._tethered(["true"])
    assert argv[1:] == ["--pdeathsig", "KILL", "--", "true"] and "preexec_fn" not in extra


def test_a_write_refused_as_busy_is_retried_with_growing_waits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`nft -f` and the netlink element batch share one retry schedule: a busy refusal changed
    nothing, so it is sent again after 0.1 s, 0.2 s, ...; any other failure is final."""
    from reconciler.engine import nftbatch, nftgen

    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    outcomes = [1, 1, 0]

    def fake_run(argv: list[str], **_kw: object) -> subprocess.CompletedProcess[bytes]:
        code = outcomes.pop(0)
        return subprocess.CompletedProcess(argv, code, b"", b"Error: Device or resource busy"
                                           if code else b"")

    monkeypatch.setattr(subprocess, "run", fake_run)
    runner = Runner()
    assert runner.run(["nft", "-f", "-"], stdin="x", write=True).returncode == 0
    assert sleeps == [0.1, 0.2] and sum(1 for a in runner.log if a[0] == "retry") == 2

    sleeps.clear()
    errors = [{2: 16}, {2: 16}, {2: 16}, {2: 0}]  # EBUSY three times, then done
    monkeypatch.setattr(nftgen, "transact", lambda *_a: errors.pop(0))
    messages = nftbatch.encode([], [("elem", "tenant_hosts", "10.20.0.6/32", "accept")],
                               "inet", "tunnelctl", set())
    assert messages is not None
    Runner().nft_elements(messages, "add element inet tunnelctl tenant_hosts { 10.20.0.6 }")
    assert sleeps == [0.1, 0.2, 0.4] and not errors
    monkeypatch.setattr(nftgen, "transact", lambda *_a: {2: 2})  # ENOENT: no retry
    with pytest.raises(CommandError, match="No such file or directory"):
        Runner().nft_elements(messages, "")
    assert sleeps == [0.1, 0.2, 0.4]
