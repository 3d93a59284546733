"""One benchmark size: every measurement of issue 6 for N tenants, as raw samples.

Each cold measurement gets a fresh lab (an empty interface in its own namespace) that is
removed afterwards whatever happens. The reconciler runs in child processes (bench.worker)
so their peak RSS is its own; wireguard-go's peak is read from /proc (VmHWM).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.engine.cycle import desired_state
from reconciler.lab import Lab, find_labs
from reconciler.repo.state import load_repo

from . import floor
from .configrepo import GATEWAY, BenchRepo

TUNNELCTL = str(Path(sys.executable).with_name("tunnelctl"))
CHANGE_LAN = "10.99.0.0/24"  # outside the pool, the reserved range and the generated LANs


class BenchFailure(RuntimeError):
    """A measured run did not do its job (not converged, not verified, writes on a no-op...)."""


@dataclass
class SizeResult:
    n: int
    samples: dict[str, list[float]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)  # correctness checks, counts, notes
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.samples.setdefault(name, []).append(value)


def gateway_lab(repo: BenchRepo) -> Lab:
    """A lab with only the cloud side: its interface is empty, as on a fresh host."""
    return Lab(repo.gateway_only, routers=0, infra=False, services=False,
               private_keys={f"gateway/{GATEWAY}": repo.keys[f"gateway/{GATEWAY}"]})


def wireguard_go_pid(lab: Lab) -> int:
    for state in find_labs():
        if state.name != lab.name:
            continue
        for proc in state.processes:
            if proc.role == f"wireguard-go {lab.interface}":
                return int(proc.pid)
    raise BenchFailure(f"no wireguard-go process recorded for lab {lab.name}")


def wireguard_go_hwm_kb(lab: Lab) -> int:
    """Peak RSS of the lab's cloud wireguard-go (its pid is recorded in the lab state)."""
    with open(f"/proc/{wireguard_go_pid(lab)}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise BenchFailure(f"no VmHWM for wireguard-go of lab {lab.name}")


def run_worker(command: str, args: dict[str, Any]) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.worker", command],
                          input=json.dumps(args), capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchFailure(f"bench.worker {command} exited {proc.returncode}: "
                           f"{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def _lab_args(lab: Lab) -> dict[str, Any]:
    return {"netns": lab.netns, "interface": lab.interface, "secret_dir": str(lab.secret_dir),
            "config_dir": str(lab.config_dir), "gateway": GATEWAY}


def measure_validate(repo: BenchRepo, result: SizeResult, runs: int) -> None:
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run([TUNNELCTL, "validate", str(repo.work)], capture_output=True,
                              text=True, check=False)
        result.add("validate", time.perf_counter() - t0)
        if proc.returncode != 0:
            raise BenchFailure(f"tunnelctl validate exited {proc.returncode}: "
                               f"{(proc.stdout + proc.stderr).strip()[-1000:]}")


def measure_cold_once(repo: BenchRepo, result: SizeResult) -> float:
    """One cold converge on a fresh lab; returns its time (load to verified)."""
    with gateway_lab(repo) as lab:
        out, wall = run_worker("converge", {"repo": str(repo.work), **_lab_args(lab)})
        if not (out["ok"] and out["verified"]) or out["problems"] or out["tunnels"] != repo.n:
            raise BenchFailure(f"cold converge of {repo.n}: {out}")
        result.add("cold", out["total"])
        result.add("cold_process", wall)
        result.add("cold_load", out["load"])
        for stage, seconds in out["timings"].items():
            result.add(f"cold_{stage}", seconds)
        result.add("rss_cli_kb", out["maxrss_kb"])
        result.add("rss_wg_cold_kb", wireguard_go_hwm_kb(lab))
        result.facts["cold_plan"] = out["summary"]
        return float(out["total"])


class Baselines:
    """The floor and the naive baseline for one repo (inputs rendered per lab interface)."""

    def __init__(self, repo: BenchRepo, result: SizeResult) -> None:
        self.repo, self.result = repo, result
        self.files = floor.yaml_files(repo.work)
        result.facts["yaml_files"] = len(self.files)
        self.state = load_repo(repo.work)

    def inputs_for(self, lab: Lab) -> floor.HostInputs:
        # The engine's own render for this lab's interface: same peers, routes and table.
        desired, secrets = desired_state(self.state, GATEWAY, lab.target())
        return floor.host_inputs(desired, secrets)

    def floor_once(self) -> float:
        with gateway_lab(self.repo) as lab:
            inputs = self.inputs_for(lab)
            parts = floor.floor_host(lab.netns, lab.interface, inputs, lab.run_dir)
            _check_host(lab, self.repo, inputs, "floor")
        parts["yaml_c_parse"] = floor.parse_c_loader(self.files)
        for name, seconds in parts.items():
            self.result.add(f"floor_{name}", seconds)
        total = sum(parts.values())
        self.result.add("floor", total)
        return total

    def naive_once(self) -> None:
        with gateway_lab(self.repo) as lab:
            inputs = self.inputs_for(lab)
            parts = floor.naive_host(lab.netns, lab.interface, inputs,
                                     lab.run_dir / "naive-table.nft")
            _check_host(lab, self.repo, inputs, "naive")
        parts["yaml_ruamel_rt"] = floor.parse_ruamel_roundtrip(self.files)
        for name, seconds in parts.items():
            self.result.add(f"naive_{name}", seconds)
        self.result.add("naive", sum(parts.values()))


def measure_cold_and_floor(repo: BenchRepo, result: SizeResult, runs: int,
                           naive_runs: int) -> None:
    """Cold converge and floor in back-to-back pairs, so both see the same machine: the
    ratio is taken per pair (other work on a shared 2-core host moves both alike)."""
    base = Baselines(repo, result)
    for i in range(runs):
        first_cold = i % 2 == 0  # alternate the order within pairs too
        cold = measure_cold_once(repo, result) if first_cold else 0.0
        fl = base.floor_once()
        cold = cold if first_cold else measure_cold_once(repo, result)
        result.add("cold_over_floor", cold / fl)
    for _ in range(naive_runs):
        base.naive_once()


def _check_host(lab: Lab, repo: BenchRepo, inputs: floor.HostInputs, what: str) -> None:
    peers, routes, table = floor.host_counts(lab.netns, lab.interface)
    if peers != repo.n or routes != len(inputs.routes) or not table:
        raise BenchFailure(f"{what} left {peers} peers, {routes} routes, table={table}; "
                           f"expected {repo.n}, {len(inputs.routes)}, True")


def measure_service(repo: BenchRepo, result: SizeResult, runs: int) -> None:
    change_file = repo.files[len(repo.files) // 2]
    with gateway_lab(repo) as lab, tempfile.TemporaryDirectory(prefix="tunnelctl-bench-") as tmp:
        args = {**_lab_args(lab), "bare": str(repo.bare), "state_dir": str(Path(tmp) / "state"),
                "repo_root": str(repo.root), "runs": runs, "change_file": change_file,
                "change_lan": CHANGE_LAN, "wg_pid": wireguard_go_pid(lab)}
        out, _ = run_worker("service", args)
        result.add("rss_wg_service_kb", wireguard_go_hwm_kb(lab))
    result.raw["service"] = out
    cold = out["cold"]
    if cold["results"][:1] != ["applied"] or not cold["engine"]["verified"]:
        raise BenchFailure(f"service cold cycle: {cold}")
    result.add("service_cold", cold["cycle"])
    rec = out["recovery"]
    result.add("recovery", rec["to_verified"])
    result.add("recovery_wg_rss_kb", rec["wg_rss_kb"])
    for item in [*out["noop"], out["noop_after"]]:
        if item["results"] != ["noop"] or item["writes"] != 0 or not item["engine"]["verified"]:
            raise BenchFailure(f"no-op cycle was not a verified zero-write no-op: {item}")
    for item in out["noop"]:
        result.add("noop", item["cycle"])
        result.add("noop_writes", item["writes"])
        eng = item["engine"]["timings"]
        result.add("noop_engine", eng.get("total", 0.0))
        result.add("noop_observe", eng.get("observe", 0.0))
        result.add("noop_plan", eng.get("plan", 0.0))
        result.add("noop_lock", eng.get("lock", 0.0))
        result.add("noop_outside_engine", item["cycle"] - eng.get("total", 0.0))
        for name, seconds in item.get("reads", {}).items():
            result.add(f"noop_read_{name}", seconds)
    for item in out["change"]:
        eng = item["engine"]
        if item["results"][:1] != ["applied"] or not eng["verified"] \
                or item["applied_commit"] != item["commit"]:
            raise BenchFailure(f"one-tenant change not applied and verified: {item}")
        result.add("change", item["to_verified"])
        result.add("change_cycle", item["cycle"])
        result.add("change_engine", eng["timings"].get("total", 0.0))
        result.add("change_outside_engine",
                   item["to_verified"] - eng["timings"].get("total", 0.0))
        for stage, seconds in eng["timings"].items():
            if stage != "total":
                result.add(f"change_{stage}", seconds)
        result.facts.setdefault("change_plans", []).append(eng["summary"])
        result.facts.setdefault("change_sizes", []).append(eng["changes"])
    result.add("rss_service_kb", out["maxrss_kb"])


BULK_COUNT = 2000


def measure_bulk(repo: BenchRepo, result: SizeResult, runs: int) -> None:
    """Removing 2,000 tunnels and all of them against adding them (the engine, one lab per
    run): removals must be as fast as additions."""
    count = min(BULK_COUNT, repo.n)
    for _ in range(runs):
        with gateway_lab(repo) as lab:
            out, _ = run_worker("bulk", {"repo": str(repo.work), "count": count,
                                         **_lab_args(lab)})
            result.add("rss_wg_bulk_kb", wireguard_go_hwm_kb(lab))
        for step, key in ((f"remove {count}", "bulk_remove"), (f"add {count}", "bulk_add"),
                          ("remove all", "bulk_remove_all"), ("add all", "bulk_add_all")):
            item = out[step]
            result.add(key, item["timings"]["total"])
            for stage in ("apply", "verify"):
                result.add(f"{key}_{stage}", item["timings"].get(stage, 0.0))
            result.facts.setdefault(f"{key}_plans", []).append(item["summary"])
        if out["remove all"]["peers"] != 0 or out["add all"]["peers"] != repo.n:
            raise BenchFailure(f"bulk steps left the wrong peers: {out}")
    result.facts["bulk_count"] = count


def measure_size(repo: BenchRepo, *, runs: int, naive_runs: int,
                 log: Callable[[str], None]) -> SizeResult:
    result = SizeResult(repo.n)
    steps: list[tuple[str, Callable[[], None]]] = [
        ("validate", lambda: measure_validate(repo, result, runs)),
        ("cold converge and floor (pairs), naive baseline",
         lambda: measure_cold_and_floor(repo, result, runs, naive_runs)),
        ("service: cold, no-op and one-change cycles", lambda: measure_service(repo, result, runs)),
        ("bulk removal and addition (2,000 and all)", lambda: measure_bulk(repo, result, runs)),
    ]
    for name, step in steps:
        t0 = time.perf_counter()
        log(f"[{repo.n}] {name} ...")
        step()
        log(f"[{repo.n}] {name} done in {time.perf_counter() - t0:.1f} s")
    return result
