#!/usr/bin/env python3
"""Time loading and validating a generated repo of N tenants (prints figures, asserts nothing).

    .venv/bin/python bench/validate_bench.py [N] [--keep DIR]

Generates N tunnel files (keys made in-process, subnets in allocation order) into a
temporary folder next to a copy of tenants/gateway.yaml, then times:
  reading the files, cold load_repo (fresh ParseCache) on one and on two processes,
  warm load_repo (same cache, nothing changed), one-file change (same cache, one tunnel
  edited), and `tunnelctl validate` as a process (what ops and CI run; best of three).
Other work on the machine inflates every figure: the load average is printed alongside.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Network
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from reconciler.engine import wgkeys
from reconciler.repo.state import ParseCache, load_repo, scan_dir

TEMPLATE = """\
# yaml-language-server: $schema=../../../schemas/tunnel.schema.json
org: {org}
name: {name}
gateway: cloud-1
public_key: {key}
subnet: {subnet}
lans:
  - {lan}
status: active
persistent_keepalive: 25
psk_rotation: 0
notes: Generated tenant {i} for the validation benchmark.
"""


def generate(root: Path, n: int) -> None:
    shutil.copy(HERE / "tenants" / "gateway.yaml", root / "gateway.yaml")
    orgs = root / "tenants"
    base = int(IPv4Network("10.20.0.0/16").network_address)
    for i in range(n):
        org = f"org-{i // 8:05d}"
        (orgs / org).mkdir(parents=True, exist_ok=True)
        subnet = IPv4Network((base + (i + 1) * 4, 30))  # block 0 is the gateway's own
        lan = IPv4Network((int(IPv4Network("172.16.0.0/12").network_address) + i * 64, 26))
        _, pub = wgkeys.keypair()
        (orgs / org / f"site-{i % 8}.yaml").write_text(TEMPLATE.format(
            org=org, name=f"site-{i % 8}", key=pub, subnet=subnet, lan=lan, i=i))


def timed(label: str, fn) -> object:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    result = fn()
    print(f"{label:<38} {time.perf_counter() - t0:8.3f} s")
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=16383)
    ap.add_argument("--keep", type=Path, help="generate into this folder and keep it")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="tunnelctl-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        timed(f"generate {args.n} tenants", lambda: generate(root, args.n))
        print(f"load average before: {os.getloadavg()[0]:.2f} (2 would mean both cores busy)")
        timed("read all files (scan_dir)", lambda: scan_dir(root))
        timed("load_repo cold, jobs=1", lambda: load_repo(root, ParseCache(), jobs=1))
        cache = ParseCache()
        state = timed("load_repo cold, jobs=2", lambda: load_repo(root, cache, jobs=2))
        print(f"  tunnels={len(state.tunnels)} problems={len(state.problems)}")  # type: ignore[attr-defined]
        timed("load_repo warm, nothing changed", lambda: load_repo(root, cache))
        victim = root / "tenants" / "org-00000" / "site-1.yaml"
        victim.write_text(victim.read_text().replace("psk_rotation: 0", "psk_rotation: 1"))
        misses = cache.misses
        timed("load_repo warm, one file changed", lambda: load_repo(root, cache))
        print(f"  files parsed again: {cache.misses - misses}")
        exe = HERE / ".venv" / "bin" / "tunnelctl"
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            proc = subprocess.run([str(exe), "validate", str(root)], capture_output=True,
                                  text=True, check=False)
            runs.append(time.perf_counter() - t0)
        print(f"{'tunnelctl validate (process), best':<38} {min(runs):8.3f} s  "
              f"(runs: {', '.join(f'{r:.2f}' for r in runs)}; exit={proc.returncode})")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
