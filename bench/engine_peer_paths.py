"""Peer apply paths compared on a real wireguard-go interface (run as root; prints, asserts nothing).

    .venv/bin/python bench/engine_peer_paths.py [N ...]        (default: 1000 4096)

For each N: adding N new peers (PSK, keepalive, /32 + LAN) to an empty interface, and changing
one peer's AllowedIPs among N, through
  uapi      one `set=1` request on the control socket (what reconciler.engine.apply uses when it can)
  wg set    `wg set` with PSKs as 0600 files (the fallback; chunked at 1000 peers per call)
  syncconf  `wg syncconf` from a full config file (re-sends every peer)
Then the whole engine on N generated tenants: converge from empty, a no-op cycle, one change.
Medians of 3 runs. A throwaway namespace and interface; always cleaned up.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml

from reconciler.engine.apply import run_commands
from reconciler.engine.commands import peer_commands, uapi_peer_request
from reconciler.engine.cycle import HostTarget, reconcile
from reconciler.engine.hoststate import Peer, Secrets
from reconciler.engine.plan import AddPeer, UpdatePeer
from reconciler.engine.psk import create_host_secret
from reconciler.engine.runner import Runner
from reconciler.engine.wgkeys import keypair
from reconciler.repo.state import load_repo


def median_of(fn: Callable[[], float], runs: int = 3) -> float:
    return statistics.median(fn() for _ in range(runs))


class Bed:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.ns, self.ifname = f"tcb-{tag}", f"tcb{tag}"
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        env = dict(os.environ, GOMEMLIMIT="256MiB", WG_PROCESS_FOREGROUND="1")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, "wireguard-go", self.ifname],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sock = Path(f"/var/run/wireguard/{self.ifname}.sock")
        while not sock.is_socket():
            time.sleep(0.02)
        self.runner = Runner(netns=self.ns)
        self.tmp = Path(tempfile.mkdtemp(prefix="tcb-"))

    def clear(self) -> None:
        self.runner.uapi(self.ifname, "set=1\nreplace_peers=true\n\n", write=True)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        Path(f"/var/run/wireguard/{self.ifname}.sock").unlink(missing_ok=True)
        subprocess.run(["ip", "netns", "del", self.ns], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def make_peers(n: int) -> tuple[list[Peer], Secrets]:
    peers, psks = [], {}
    for i in range(n):
        pub = keypair()[1]
        base = 4 * (i + 1)
        peers.append(Peer(pub, (f"10.20.{base >> 8}.{(base & 255) + 2}/32",
                                f"10.{100 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32"), "d", 25))
        psks[pub] = keypair()[0]
    return peers, Secrets(keypair()[0], psks)


def conf_text(peers: list[Peer], sec: Secrets) -> str:
    lines = ["[Interface]", f"PrivateKey = {sec.private_key}", "ListenPort = 51821", ""]
    for p in peers:
        lines += ["[Peer]", f"PublicKey = {p.public_key}", f"PresharedKey = {sec.psk(p.public_key)}",
                  f"AllowedIPs = {', '.join(p.allowed_ips)}", "PersistentKeepalive = 25", ""]
    return "\n".join(lines)


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def peer_paths(bed: Bed, n: int) -> dict[str, float]:
    peers, sec = make_peers(n)
    adds = [AddPeer(p) for p in peers]
    changed = Peer(peers[0].public_key, (*peers[0].allowed_ips, "192.168.77.0/24"), "d", 25)
    one = [UpdatePeer(peers[0], changed)]
    out: dict[str, float] = {}

    def uapi(changes: list[AddPeer] | list[UpdatePeer]) -> float:
        return timed(lambda: bed.runner.uapi(bed.ifname, uapi_peer_request(changes, [], sec),
                                             write=True))

    def wg_set(changes: list[AddPeer] | list[UpdatePeer]) -> float:
        return timed(lambda: run_commands(bed.runner, peer_commands(bed.ifname, changes, [], sec,
                                                                    uapi=False)))

    def syncconf(peer_list: list[Peer]) -> float:
        path = bed.tmp / "wg.conf"
        def go() -> None:  # the file is part of the cost: a real apply has to write it
            path.write_text(conf_text(peer_list, sec))
            path.chmod(0o600)
            bed.runner.run(["wg", "syncconf", bed.ifname, str(path)], write=True)
        return timed(go)

    for name, fn in (("uapi", lambda: uapi(adds)), ("wg set", lambda: wg_set(adds)),
                     ("syncconf", lambda: syncconf(peers))):
        def add_once(fn: Callable[[], float] = fn) -> float:
            bed.clear()
            return fn()
        out[f"add {n} new: {name}"] = median_of(add_once)
    bed.clear()
    uapi(adds)
    new_list = [changed, *peers[1:]]
    old_list = peers

    def flip(fn: Callable[[], float]) -> float:
        t = fn()
        # put it back the cheap way so every run changes exactly one peer
        bed.runner.uapi(bed.ifname, uapi_peer_request([UpdatePeer(changed, peers[0])], [], sec),
                        write=True)
        return t

    out[f"change 1 of {n}: uapi"] = median_of(lambda: flip(lambda: uapi(one)))
    out[f"change 1 of {n}: wg set"] = median_of(lambda: flip(lambda: wg_set(one)))
    out[f"change 1 of {n}: syncconf"] = median_of(lambda: flip(lambda: syncconf(new_list)))
    del old_list
    return out


def engine_cycles(bed: Bed, n: int) -> dict[str, str]:
    bed.clear()
    repo = bed.tmp / f"repo{n}"
    repo.mkdir()
    (repo / "gateway.yaml").write_text(yaml.safe_dump({
        "name": "gw-bench", "interface": "wg1", "address": "10.20.0.1/16", "pool": "10.20.0.0/16",
        "endpoint": "203.0.113.10:51821",
        "services": {"sip": {"proto": "udp", "ports": "5060,5080"},
                     "rtp": {"proto": "udp", "ports": "10000-20000"}},
        "default_services": ["sip", "rtp"]}))
    for i in range(n):
        base = 4 * (i + 1)
        d = repo / f"org{i:05d}"
        d.mkdir()
        (d / "site.yaml").write_text(yaml.safe_dump({
            "org": f"org{i:05d}", "name": "site", "gateway": "gw-bench",
            "public_key": keypair()[1], "subnet": f"10.20.{base >> 8}.{base & 255}/30",
            "lans": [f"10.{100 + (i >> 16)}.{(i >> 8) & 255}.{(i & 255)}/32"] if i % 2 else []}))
    sdir = bed.tmp / f"secrets{n}"
    sdir.mkdir(mode=0o700)
    (sdir / "private.key").write_text(keypair()[0])
    create_host_secret(sdir / "psk.secret")
    target = HostTarget(netns=bed.ns, interface=bed.ifname, secret_dir=sdir,
                        config_dir=bed.tmp / f"conf{n}", lock_dir=bed.tmp / "lock")
    state = load_repo(repo)
    out = {}
    for label in ("converge from empty", "no-op cycle"):
        r = reconcile(state, target)
        assert r.error is None, r.error
        out[f"engine {n}: {label}"] = _fmt_timings(r.timings, r.writes)
    f = repo / "org00001" / "site.yaml"
    data = yaml.safe_load(f.read_text())
    data["psk_rotation"] = 1
    f.write_text(yaml.safe_dump(data))
    r = reconcile(load_repo(repo), target)
    assert r.error is None, r.error
    out[f"engine {n}: one PSK rotated"] = _fmt_timings(r.timings, r.writes)
    return out


def _fmt_timings(t: dict[str, float] | object, writes: int) -> str:
    assert isinstance(t, dict)
    return " ".join(f"{k}={v * 1000:.1f}ms" for k, v in t.items()) + f" writes={writes}"


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 4096]
    bed = Bed()
    try:
        for n in sizes:
            for k, seconds in peer_paths(bed, n).items():
                print(f"{k:<32} {seconds * 1000:9.2f} ms", flush=True)
        for n in sizes:
            for k, line in engine_cycles(bed, n).items():
                print(f"{k:<32} {line}", flush=True)
    finally:
        bed.close()


if __name__ == "__main__":
    main()
