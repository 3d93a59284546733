"""Whole-table load time: `nft -f` text vs `nft -j -f` JSON of the same typed table.

    sudo .venv/bin/python -m bench.nft_load [TENANTS] [RUNS]

Renders a generated repo's table (default 16,383 tenants), then replaces it in a throwaway
network namespace `tcbench-<pid>` (deleted afterwards) alternately with either payload, the
same replace-the-table transaction apply runs. Prints Python serialisation and nft load times.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reconciler.engine import render as R
from reconciler.engine.nftables import Table
from reconciler.lab.repogen import generate_repo
from reconciler.repo.state import load_repo


def _table(tenants: int) -> tuple[Table, str]:
    with tempfile.TemporaryDirectory() as tmp:
        generate_repo(Path(tmp) / "repo", tenants, gateway="gw-bench")
        repo = load_repo(Path(tmp) / "repo")
    gw = next(iter(repo.gateways.values()))
    tunnels = R.active_tunnels(gw, repo.tunnels)
    return R.firewall_table(gw, tunnels, "wg1"), R.render_firewall(gw, tunnels, "wg1").fingerprint


def _load(ns: str, argv: list[str], payload: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], input=payload, text=True,
                          capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{argv}: {proc.stderr[:500]}")
    return elapsed


def main() -> int:
    tenants = int(sys.argv[1]) if len(sys.argv) > 1 else 16383
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    table, fp = _table(tenants)
    t0 = time.perf_counter()
    text = f"table inet tunnelctl {{}}\ndelete table inet tunnelctl\n{table.text(fp)}"
    t1 = time.perf_counter()
    payload = table.transaction_json(fp)
    t2 = time.perf_counter()
    print(f"{tenants} tenants, {len(table.elements)} map elements; serialise: text "
          f"{(t1 - t0) * 1000:.0f} ms ({len(text)} B), JSON {(t2 - t1) * 1000:.0f} ms "
          f"({len(payload)} B)")
    ns = f"tcbench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        times: dict[str, list[float]] = {"nft -f (text)": [], "nft -j -f (JSON)": []}
        for _ in range(runs):  # alternated, so both see the same machine state
            times["nft -f (text)"].append(_load(ns, ["nft", "-f", "-"], text))
            times["nft -j -f (JSON)"].append(_load(ns, ["nft", "-j", "-f", "-"], payload))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values) * 1000:.0f} ms, "
              f"min {min(values) * 1000:.0f} ms over {runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
