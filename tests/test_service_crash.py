"""kill -9 at random points of an apply, restart: the host converges every time.

Two trees of 300 tenants alternate as fast-forward commits; every switch changes most peers
(keepalive), removes and adds 30 tenants, and adds or deletes ~100 LAN routes (and so the
firewall sets). After each kill the service is restarted and must converge: exactly the
expected peers with their AllowedIPs, our routes once each, the same nft rule count, and a
plan against the live host that is empty.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from git_remote import ConfigRemote
from service_harness import ServiceHarness

from reconciler.engine.cycle import reconcile
from reconciler.engine.render import active_tunnels, render_routes, tunnel_allowed_ips
from reconciler.lab import add_generated_tunnels, generate_repo
from reconciler.repo.state import load_repo

GATEWAY = "lab-1"
TENANTS = 300
TRIALS = 20


def make_trees(root: Path) -> tuple[Any, Path, Path]:
    gen = generate_repo(root / "a", TENANTS, gateway=GATEWAY)
    b = root / "b"
    shutil.copytree(gen.root, b)
    files = sorted(b.glob("*/*.yaml"))
    for f in files[:30]:
        f.unlink()
    for f in files[30:]:
        text = f.read_text().replace("persistent_keepalive: 25",
                                     "persistent_keepalive: 25\ncloud_keepalive: 20")
        lines = ["lans: []" if line.startswith("lans:") else line for line in text.splitlines()]
        f.write_text("\n".join(lines) + "\n")
    add_generated_tunnels(b, 30, gateway=GATEWAY, org_prefix="bee", lan_every=0)
    return gen, gen.root, b


def expected(tree: Path, interface: str) -> tuple[dict[str, str], list[str]]:
    repo = load_repo(tree)
    assert repo.ok, repo.problems[:3]
    gw = repo.gateways[GATEWAY]
    active = active_tunnels(gw, repo.tunnels)
    peers = {t.public_key: ", ".join(sorted(tunnel_allowed_ips(t))) for t in active}
    routes = sorted(r.dst for r in render_routes(gw, active, interface))
    return peers, routes


def _ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def host_matches(svc: ServiceHarness, want: tuple[dict[str, str], list[str]]) -> bool:
    peers = {k: ", ".join(sorted(v.split(" "))) for k, v in svc.peers().items()}
    return peers == want[0]


@pytest.mark.lab
def test_kill_9_during_applies_always_converges(tmp_path: Path,
                                                lab: Callable[..., Any]) -> None:
    gen, tree_a, tree_b = make_trees(tmp_path / "trees")
    remote = ConfigRemote(tmp_path / "remote")
    first = remote.replace_tree(tree_a, "tree A")
    the_lab = lab(tree_a, routers=0, infra=False, services=False, private_keys=gen.private_keys)
    target = the_lab.target()
    svc = ServiceHarness(tmp_path / "svc", remote, target, GATEWAY, interval=60.0, watch=False,
                         metrics_address="")
    want = {"A": expected(tree_a, target.interface), "B": expected(tree_b, target.interface)}
    rng = random.Random(4242)
    try:
        svc.start()
        svc.wait_applied(first, timeout=30)
        baseline_rules = svc.nft_rules()
        foreign_tables = svc.nft_tables()
        assert baseline_rules > 0
        # Calibrate: how long a switch takes, and where its apply step sits in the cycle.
        c = remote.replace_tree(tree_b, "tree B")
        wall0, t0 = time.time(), time.monotonic()
        svc.signal(signal.SIGHUP)
        svc.wait_applied(c, timeout=30)
        cycle = time.monotonic() - t0
        events = [json.loads(line) for line in svc.logs().splitlines() if line.startswith("{")]
        timings = [e["timings"] for e in events if e["event"] == "applied"][-1]
        apply_start = [_ts(e["ts"]) for e in events if e["event"].startswith("applying on")][-1] - wall0
        apply_window = (max(0.0, apply_start - 0.01),
                        apply_start + timings["snapshot"] + timings["apply"] + timings["verify"])
        print(f"switch A<->B: whole cycle {cycle:.3f}s, apply step at "
              f"{apply_window[0]:.3f}-{apply_window[1]:.3f}s after SIGHUP, engine {timings}")
        current = "B"
        landed: Counter[str] = Counter()
        restart_times = []
        for trial in range(TRIALS):
            nxt = "A" if current == "B" else "B"
            commit = remote.replace_tree(tree_a if nxt == "A" else tree_b, f"tree {nxt} #{trial}")
            # Every other kill aims at the apply step itself; the rest anywhere in the cycle.
            delay = rng.uniform(*apply_window) if trial % 2 == 0 else rng.uniform(0.0, cycle * 1.2)
            svc.signal(signal.SIGHUP)
            time.sleep(delay)
            phase_at_kill = svc.state().get("phase")
            svc.kill9()
            before = ("old" if host_matches(svc, want[current]) else
                      "new" if host_matches(svc, want[nxt]) else "mixed")
            landed[f"{phase_at_kill}/{before}"] += 1
            t_restart = time.monotonic()
            svc.start()
            svc.wait_applied(commit, timeout=30)
            restart_times.append(time.monotonic() - t_restart)
            # Converged, nothing lost, nothing duplicated.
            peers = {k: ", ".join(sorted(v.split(" "))) for k, v in svc.peers().items()}
            assert peers == want[nxt][0], f"trial {trial}: peers differ after restart"
            routes = svc.routes()
            dsts = sorted(r.split()[0] for r in routes)
            assert dsts == want[nxt][1], f"trial {trial}: routes differ"
            assert len(dsts) == len(set(dsts)), f"trial {trial}: duplicate routes"
            assert svc.nft_rules() == baseline_rules, f"trial {trial}: nft rule count changed"
            assert svc.nft_tables() == foreign_tables
            check = reconcile(load_repo(tree_a if nxt == "A" else tree_b), target,
                              gateway=GATEWAY, dry_run=True)
            assert check.ok and check.plan.empty, (trial, check.error, check.plan.render_text())
            current = nxt
        print(f"kills landed (phase at kill / host before restart): {dict(landed)}")
        print(f"restart -> converged: median {sorted(restart_times)[len(restart_times) // 2]:.2f}s"
              f", max {max(restart_times):.2f}s")
        mid_cycle = sum(n for k, n in landed.items() if k.startswith("Reconciling"))
        assert mid_cycle >= TRIALS // 4, f"too few kills landed inside a cycle: {dict(landed)}"
        # Every commit that got applied was audited; nothing was lost from the local queue.
        entries = remote.audit_entries(GATEWAY)
        assert entries and all(e["result"] in ("applied", "repaired") for e in entries)
    finally:
        svc.close()
