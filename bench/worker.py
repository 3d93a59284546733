"""Child processes of the benchmark, so each one's peak memory (ru_maxrss) is the reconciler's own.

    python -m bench.worker converge < args.json   load + validate + reconcile a repo folder once
    python -m bench.worker service < args.json    the service's cycle: cold, no-op and one-change
    python -m bench.worker bulk < args.json       bulk removal against addition (engine)

Arguments come as one JSON object on stdin; each prints one JSON object on stdout. Timings start after imports (the floor's tools are
compiled programs that pay no interpreter start); the process wall time is measured by the
parent and reported next to it.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from reconciler.engine.cycle import HostTarget, ReconcileResult, reconcile
from reconciler.repo.state import load_repo
from reconciler.service import controller as controller_module


def maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _target(args: dict[str, Any]) -> HostTarget:
    return HostTarget(netns=args["netns"], interface=args["interface"],
                      secret_dir=Path(args["secret_dir"]), config_dir=Path(args["config_dir"]))


def _result(res: ReconcileResult) -> dict[str, Any]:
    return {"ok": res.ok, "verified": res.verified, "applied": res.applied, "error": res.error,
            "failed_step": res.failed_step, "writes": res.writes, "changes": len(res.plan),
            "summary": res.plan.summary_line(),
            "timings": {k: round(v, 6) for k, v in res.timings.items()}}


def converge(args: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    repo = load_repo(args["repo"], jobs=os.cpu_count() or 1)  # as `tunnelctl apply` loads
    t_load = time.perf_counter() - t0
    res = reconcile(repo, _target(args), gateway=args["gateway"])
    total = time.perf_counter() - t0
    out = _result(res)
    out.update(load=round(t_load, 6), total=round(total, 6), problems=len(repo.problems),
               tunnels=len(repo.tunnels), maxrss_kb=maxrss_kb())
    return out


def bulk(args: dict[str, Any]) -> dict[str, Any]:
    """Bulk removal against addition on one lab: converge all N, then remove the first
    `count` tunnels, add them back, remove all N and add all back (the engine as `tunnelctl
    apply` runs it; each step a fresh plan). Times are the engine's (render..verify)."""
    import dataclasses

    repo = load_repo(args["repo"], jobs=os.cpu_count() or 1)
    target = _target(args)
    count = int(args["count"])
    full = repo.tunnels
    steps = [("converge", full), (f"remove {count}", full[count:]), (f"add {count}", full),
             ("remove all", ()), ("add all", full)]
    out: dict[str, Any] = {}
    for name, tunnels in steps:
        state = dataclasses.replace(repo, tunnels=tunnels)
        res = reconcile(state, target, gateway=args["gateway"])
        if not (res.ok and res.verified):
            raise SystemExit(f"bulk step {name}: {res.error}")
        item = _result(res)
        item["peers"] = len(res.observed.peers) if res.observed is not None else -1
        out[name] = item
    out["maxrss_kb"] = maxrss_kb()
    return out


class _Recorder:
    """Wraps the engine's reconcile as the controller calls it: when each call returned."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, ReconcileResult]] = []

    def __call__(self, *a: Any, **kw: Any) -> ReconcileResult:
        res = reconcile(*a, **kw)
        self.calls.append((time.perf_counter(), res))
        return res


def service(args: dict[str, Any]) -> dict[str, Any]:
    from bench.configrepo import BenchRepo
    from reconciler.service.controller import Controller
    from reconciler.service.settings import Settings

    recorder = _Recorder()
    controller_module.reconcile = recorder  # type: ignore[attr-defined]  # measuring only
    settings = Settings(
        repo_url=args["bare"], branch="main", gateway=args["gateway"], interval=30.0,
        state_dir=Path(args["state_dir"]),
        secret_dir=Path(args["secret_dir"]), config_dir=Path(args["config_dir"]),
        netns=args["netns"], interface=args["interface"], metrics_address="", watch=False,
        host="bench", max_removal_share=1.0)
    repo = BenchRepo(0, 0, Path(args["repo_root"]), {}, ())  # only its clone is used: commits
    # Reboot recovery: the service starts on an empty interface (every peer without an
    # endpoint, as after a reboot before any customer handshakes) and converges all of it.
    t_start = time.perf_counter()
    ctl = Controller(settings)
    ctl.start()
    start_seconds = time.perf_counter() - t_start

    from reconciler.engine import observe as observe_module

    def cycle(label: str) -> dict[str, Any]:
        recorder.calls.clear()
        observe_module.last_reads = {}
        t0 = time.perf_counter()
        reports = ctl.cycle()
        total = time.perf_counter() - t0
        reads = {k: round(v, 6) for k, v in observe_module.last_reads.items()}
        ctl.collect_garbage()  # as the service loop does after each cycle, while it waits
        changed = [(t, r) for t, r in recorder.calls if r.changed]
        t_end, res = changed[0] if changed else (recorder.calls[-1] if recorder.calls
                                                 else (time.perf_counter(), None))
        return {"label": label, "cycle": round(total, 6),
                "to_verified": round(t_end - t0, 6),
                "results": [r.result for r in reports],
                "reasons": [r.reason for r in reports if r.reason][:3],
                "engine": _result(res) if res is not None else None,
                "engine_calls": len(recorder.calls),
                "writes": sum(r.writes for _, r in recorder.calls),
                "reads": reads,
                "maxrss_kb": maxrss_kb()}  # the peak so far: which cycle reached it

    out: dict[str, Any] = {"cold": cycle("cold"), "noop": [], "change": []}
    out["recovery"] = {"start": round(start_seconds, 6),
                       "to_verified": round(start_seconds + out["cold"]["to_verified"], 6),
                       "wg_rss_kb": _wireguard_rss_kb(args)}
    for i in range(args["runs"]):
        out["noop"].append(cycle(f"noop {i + 1}"))
    rel = args["change_file"]
    for i in range(args["runs"]):
        action, sha = repo.toggle_lan(rel, args["change_lan"])
        item = cycle(f"change {i + 1}: {action} LAN on {rel}")
        item["commit"] = sha
        item["applied_commit"] = ctl.applied_commit
        out["change"].append(item)
    out["noop_after"] = cycle("noop after changes")
    out["maxrss_kb"] = maxrss_kb()
    return out


def _wireguard_rss_kb(args: dict[str, Any]) -> int:
    """VmRSS of the lab's wireguard-go right now (the parent reads its peak, VmHWM)."""
    pid_file = args.get("wg_pid")
    if not pid_file:
        return 0
    try:
        with open(f"/proc/{int(pid_file)}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def main() -> None:
    command = sys.argv[1]
    args = json.loads(sys.stdin.read())
    result = {"converge": converge, "service": service, "bulk": bulk}[command](args)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
