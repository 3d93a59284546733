"""The scale benchmark (bench/, issue 6) at N = 1,000, one run of everything, as a smoke test.

No timing is asserted (speed is shown by `python -m bench`, which prints numbers). What is
asserted is that every measured run did its job: the cold converge, the floor and the naive
baseline each leave all peers, routes and the table on the host (the bench checks and raises
otherwise), the service applies and verifies each one-tenant change, no-op cycles make zero
host writes, and a ping flow through an untouched tunnel loses nothing during an apply.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ is not installed

from bench.report import table, targets
from bench.run import run_bench

pytestmark = pytest.mark.lab

N = 1000


def test_bench_quick_variant(tmp_path: Path) -> None:
    messages: list[str] = []
    results = run_bench([N], runs=1, naive_runs=1, loss_n=N, out=tmp_path, log=messages.append)
    assert [r.n for r in results] == [N]
    result = results[0]
    for key in ("validate", "cold", "floor", "floor_wg_setconf", "floor_ip_batch", "floor_nft_f",
                "floor_yaml_c_parse", "naive", "service_cold", "noop", "change"):
        assert len(result.samples.get(key, [])) >= 1, (key, messages)
    assert result.samples["noop_writes"] == [0]
    assert len(result.facts["change_plans"]) == 1
    # One LAN on one tunnel: its peer, one route, the firewall map and the config file.
    assert 1 <= result.facts["change_sizes"][0] <= 4, result.facts["change_plans"]
    loss = result.facts["packet_loss"]
    assert loss["handshake"] and loss["add_ok"] and loss["remove_ok"], loss
    assert loss["add_changes"] >= N - 1 and loss["remove_changes"] >= N - 1, loss
    assert loss["sent"] > 50 and loss["lost"] == 0 and loss["received"] == loss["sent"], loss
    rendered = table(results)
    assert f"N = {N:,}" in rendered and "ping loss" in rendered
    assert {name for name, _, _ in targets(result)} >= {"validate whole tree <= 4 s"}
