"""A big plan that loads the firewall table from nothing (a cold converge) loads it in two
parts: the structure with empty tenant maps before the peers, the maps' elements beside them.
The structure alone must isolate, and the two parts together must be the table."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.engine import render_firewall
from reconciler.engine.commands import SPLIT_LOAD_MIN, commands_for, split_load
from reconciler.engine.cycle import reconcile
from reconciler.engine.hoststate import TENANT_MAPS, Secrets
from reconciler.engine.nft_transactions import tenant_elements, without_tenant_elements
from reconciler.engine.nftables import Table
from reconciler.engine.parsers import firewall_from_elements
from reconciler.engine.plan import AddPeer, Change, Plan, ReplaceFirewall
from reconciler.engine.render import render_host
from reconciler.engine.render_tenant import active_tunnels
from reconciler.engine.runner import Runner
from reconciler.engine.wgkeys import generate_private_key
from reconciler.lab import Lab, generate_repo
from reconciler.repo.state import load_repo


def _table(root: Path, tenants: int, dual_stack: bool) -> tuple[Table, str]:
    gen = generate_repo(root, tenants, dual_stack=dual_stack)
    repo = load_repo(gen.root)
    assert repo.ok, repo.problems
    gateway = next(iter(repo.gateways.values()))
    active = active_tunnels(gateway, repo.tunnels)
    table = render_firewall.firewall_table(gateway, active, "wg1")
    fw = render_firewall.render_firewall(gateway, active, "wg1")
    return table, fw.fingerprint


@pytest.mark.parametrize("dual_stack", [False, True])
def test_the_structure_is_the_table_without_its_tenant_elements(tmp_path: Path,
                                                                dual_stack: bool) -> None:
    table, fp = _table(tmp_path, 40, dual_stack)
    assert table.hosts and table.elements and table.routed or not table.routed
    empty = dataclasses.replace(table, elements=[], hosts=[], elements6=[], hosts6=[])
    assert without_tenant_elements(table.text(fp)) == empty.text(fp)
    # What the structure leaves out is exactly the tenant map elements, the routed set stays.
    full = firewall_from_elements(set(table.structure()) | set(table.element_items()))
    parts = firewall_from_elements(set(empty.structure()) | set(empty.element_items())
                                   | set(tenant_elements(full.elements)))
    assert parts.elements == full.elements
    assert all(e[1] in TENANT_MAPS for e in tenant_elements(full.elements))


def _plan(tmp_path: Path, tenants: int, old_table: bool = False) -> tuple[Plan, Secrets]:
    gen = generate_repo(tmp_path / "repo", tenants)
    repo = load_repo(gen.root)
    gateway = next(iter(repo.gateways.values()))
    state, secrets = render_host(gateway, repo.tunnels, interface="wg1",
                                 private_key=generate_private_key(), host_secret=b"s" * 32,
                                 config_path=None)
    assert state.firewall is not None
    old = state.firewall if old_table else None
    changes: tuple[Change, ...] = (ReplaceFirewall(old, state.firewall),
                                   *(AddPeer(p, p.owner) for p in state.peers.values()))
    return Plan(changes), secrets


def test_only_a_big_plan_loading_from_nothing_is_split(tmp_path: Path) -> None:
    big, secrets = _plan(tmp_path / "a", SPLIT_LOAD_MIN)
    assert split_load(big)
    steps = commands_for(big, "wg1", secrets, uapi=True)
    assert [s.name for s in steps] == ["firewall", "peers", "elements"]
    structure, elements = steps[0].commands[0], steps[2].commands[0]
    assert "elements = {\n" not in str(getattr(structure, "stdin", ""))
    assert str(getattr(elements, "stdin", "")).startswith("add element inet tunnelctl ")
    small, secrets = _plan(tmp_path / "b", SPLIT_LOAD_MIN - 10)
    assert not split_load(small)
    assert [s.name for s in commands_for(small, "wg1", secrets, uapi=True)] == [
        "firewall", "peers"]
    replaced, _ = _plan(tmp_path / "c", SPLIT_LOAD_MIN, old_table=True)
    assert not split_load(replaced)  # a table that exists is replaced in one transaction


@pytest.fixture
def big_lab(tmp_path: Path) -> Iterator[Lab]:
    gen = generate_repo(tmp_path / "repo", SPLIT_LOAD_MIN + 44, gateway="gw-split")
    lab = Lab(gen.root, routers=0, infra=False, services=False).up()
    try:
        yield lab
    finally:
        lab.down()


@pytest.mark.lab
def test_a_cold_converge_loads_in_two_parts_and_leaves_the_whole_table(big_lab: Lab) -> None:
    repo = load_repo(big_lab.repo)
    runner = Runner(big_lab.netns)
    first = reconcile(repo, big_lab.target(), runner=runner)
    assert first.verified, first.error
    loads = [a for a in runner.log if a[-2:] == ("-f", "-") and "nft" in a]
    assert len(loads) == 2  # the structure, then the elements
    after = runner.log[runner.log.index(loads[-1]):]
    # Verified by the ruleset generation (moved by exactly our two commits), not listed.
    assert not any("list" in a and "tunnelctl" in a for a in after), after
    # A full observe of the host finds the table (and all else) as desired: nothing to do.
    again = reconcile(load_repo(big_lab.repo), big_lab.target(), runner=Runner(big_lab.netns))
    assert again.verified and again.plan.empty and again.writes == 0, again.error
