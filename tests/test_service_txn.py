"""The real service: every applied commit audited exactly once, whatever step a kill -9 hits,
and a cross-file conflict holds the org that caused it, not the one it collides with."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from git_remote import ConfigRemote
from service_harness import ServiceHarness

from reconciler.engine.cycle import reconcile
from reconciler.lab import add_generated_tunnels, generate_repo
from reconciler.repo.state import load_repo
from reconciler.service.controller import flat_summary
from reconciler.service.journal import KILL_ENV, KILL_STEPS

GATEWAY = "lab-1"


def setup(tmp_path: Path, lab: Callable[..., Any]) -> tuple[ConfigRemote, ServiceHarness, str]:
    gen = generate_repo(tmp_path / "gen", 4, gateway=GATEWAY)  # gen00000/site2 has a LAN
    remote = ConfigRemote(tmp_path / "remote")
    first = remote.replace_tree(gen.root, "4 tenants")
    the_lab = lab(gen.root, routers=0, infra=False, services=False,
                  private_keys=gen.private_keys)
    svc = ServiceHarness(tmp_path / "svc", remote, the_lab.target(), GATEWAY, interval=60.0,
                         watch=False, metrics_address="")
    return remote, svc, first


def keepalive(svc: ServiceHarness) -> dict[str, str]:
    out = svc.ns("wg", "show", svc.target.interface, "persistent-keepalive")
    return dict(line.split("\t") for line in out.splitlines() if line)


@pytest.mark.slow
@pytest.mark.lab
def test_kill_9_at_every_step_boundary_audits_each_applied_commit_once(
        tmp_path: Path, lab: Callable[..., Any]) -> None:
    remote, svc, first = setup(tmp_path, lab)
    applied = [first]
    wanted: dict[str, dict[str, int]] = {}
    t0 = time.monotonic()
    try:
        svc.start()
        svc.wait_applied(first, timeout=30)
        for n, step in enumerate(KILL_STEPS):
            svc.stop()
            # A tunnel with a LAN (peer, route, firewall and config change) and one removed.
            add_generated_tunnels(remote.work, 1, gateway=GATEWAY, org_prefix=f"k{n}",
                                  lan_every=1)
            if n % 2:
                victim = min(remote.work.glob("gen00000/*.yaml"))
                victim.unlink()
            commit = remote.commit(None, f"change before a kill at {step}")
            plan = reconcile(load_repo(remote.work), svc.target, gateway=GATEWAY, dry_run=True)
            assert plan.ok, plan.error
            wanted[commit] = flat_summary(plan)
            svc.start(env_extra={KILL_ENV: step})
            assert svc.proc is not None
            assert svc.proc.wait(30) == -9, f"the hook did not fire at {step}"
            svc.stop()
            svc.start()
            svc.wait_applied(commit, timeout=30)

            def pushed(c: str = commit) -> bool:
                return any(e["commit"] == c and e["result"] == "applied"
                           for e in remote.audit_entries(GATEWAY))

            svc.wait(f"entry of {commit[:12]} pushed after a kill at {step}", pushed, timeout=20)
            applied.append(commit)
        svc.stop()
        entries = remote.audit_entries(GATEWAY)
        counts = Counter(e["commit"] for e in entries if e["result"] == "applied")
        assert counts == Counter(applied), (dict(counts), applied)
        assert not [e for e in entries if e["result"] == "failed"], entries
        for e in entries:
            if e["commit"] in wanted and e["result"] == "applied":
                # The whole plan of the commit, not what was left when the kill came.
                assert e["summary"] == wanted[e["commit"]], (e, KILL_STEPS)
        resumed = {KILL_STEPS[i] for i, c in enumerate(applied[1:])
                   if any(e["commit"] == c and e["resumed"] for e in entries)}
        assert resumed == {"intent", "apply", "verify", "state"}, resumed
        assert not (svc.state_dir / "intent.json").exists()
    finally:
        svc.close()
    print(f"{len(KILL_STEPS)} kills and restarts in {time.monotonic() - t0:.1f}s")


@pytest.mark.slow
@pytest.mark.lab
def test_conflict_holds_the_org_that_claimed_a_lan(tmp_path: Path,
                                                   lab: Callable[..., Any]) -> None:
    remote, svc, first = setup(tmp_path, lab)
    try:
        svc.start()
        svc.wait_applied(first, timeout=30)
        site0 = remote.work / "gen00000" / "site0.yaml"
        a_key = next(ln.split(":", 1)[1].strip() for ln in site0.read_text().splitlines()
                     if ln.startswith("public_key:"))
        assert keepalive(svc)[a_key] == "off"  # the cloud sends none unless asked
        (c,) = add_generated_tunnels(remote.work, 1, gateway=GATEWAY, org_prefix="cee",
                                     lan_every=1)
        lines = ["lans: [172.16.0.0/24]" if ln.startswith("lans:") else ln
                 for ln in c.path.read_text().splitlines()]  # org A's LAN (gen00000/site2)
        c.path.write_text("\n".join(lines) + "\n")
        site0.write_text(site0.read_text().replace("persistent_keepalive: 25",
                                                   "persistent_keepalive: 25\ncloud_keepalive: 15"))
        head = remote.commit(None, "C claims A's LAN; A changes its site0")
        svc.signal(1)  # SIGHUP
        svc.wait_applied(head, timeout=20)
        assert keepalive(svc)[a_key] == "15", "A's unrelated change was applied"
        assert c.public_key not in svc.peers(), "C is held"
        status = svc.status()
        assert status["phase"] == "Degraded"
        assert status["held_orgs"] == {"cee00000": first}
        reason = status["held_reason"]
        assert "org cee00000" in reason and "gen00000/site2.yaml (unchanged)" in reason
        assert "cee00000/site0.yaml is new" in reason and "not held: gen00000" in reason
        degraded = svc.cli("status", check=False)
        assert degraded.returncode == 1 and "cee00000" in degraded.stdout
        svc.wait("audit entry names the held org", lambda: any(
            e["commit"] == head and e["held_orgs"] == {"cee00000": first}
            and "cee00000/site0.yaml is new" in e["reason"]
            for e in remote.audit_entries(GATEWAY)))
    finally:
        svc.close()
