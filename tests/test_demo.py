"""Smoke test of `tunnelctl demo --fast`: the whole story runs green on real namespaces and
leaves nothing behind; with --keep it leaves the lab up and `tunnelctl lab down` removes it."""

from __future__ import annotations

import io
import re
import secrets
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from reconciler.cli import main
from reconciler.lab import RUN_ROOT, list_namespaces
from reconciler.lab.demo import DemoOptions, run_demo

pytestmark = pytest.mark.lab


def _name() -> str:
    return "d" + secrets.token_hex(2)


def _leftovers(name: str) -> list[str]:
    return [ns for ns in list_namespaces() if ns.startswith(f"tcl-{name}-")]


def test_demo_runs_green_and_cleans_up() -> None:
    name = _name()
    out = io.StringIO()
    code = run_demo(DemoOptions(fast=True, name=name), Console(file=out, width=200))
    text = out.getvalue()
    assert code == 0, text
    for expected in ("1/6", "Plan for the host", "+ peer acme-voip/hq", "customer routers online",
                     "Isolation report", "tenant → cloud SSH", "spoofed source",
                     "PR plan", "+ dune-logistics/depot", ("dune-logistics/depot's router "
                     "completed its handshake"), "Demo complete"):
        assert expected in text, expected
    assert "FAIL" not in text
    checks = re.findall(r"│ (allowed|blocked)\s+│ .*? │ (PASS|FAIL) │", text)
    assert len(checks) >= 9 and all(mark == "PASS" for _, mark in checks)
    # the audit entry comes from the service's audit branch when the service is built
    assert "Audit entry: branch audit/cloud-1" in text or "the engine alone does not audit" in text
    assert not _leftovers(name) and not (RUN_ROOT / name).exists()


def test_demo_keep_leaves_the_lab_and_prints_how_to_remove_it() -> None:
    name = _name()
    out = io.StringIO()
    try:
        code = run_demo(DemoOptions(fast=True, keep=True, name=name), Console(file=out, width=200))
        assert code == 0, out.getvalue()
        assert f"tunnelctl lab down --name {name}" in out.getvalue()
        assert _leftovers(name)
    finally:
        res = CliRunner().invoke(main, ["lab", "down", "--name", name])
    assert res.exit_code == 0, res.output
    assert not _leftovers(name) and not (RUN_ROOT / name).exists()


def test_demo_of_the_dual_stack_example_proves_ipv6_isolation_too() -> None:
    """`tunnelctl demo --repo examples/dual-stack`: the same walk with IPv6 inside the tunnels;
    the new tunnel of the pull request gets the first free subnet6."""
    name = _name()
    out = io.StringIO()
    repo = Path(__file__).resolve().parent.parent / "examples" / "dual-stack"
    code = run_demo(DemoOptions(fast=True, name=name, tenants=repo), Console(file=out, width=200))
    text = out.getvalue()
    assert code == 0, text
    assert "10.20.0.1/16,fd42:4242:1::1/48" in text and "fd00:10::/64" in text
    assert "subnet6 fd42:4242:1:4::/64" in text, "the PR's tunnel got the first free prefix"
    checks = re.findall(r"│ (allowed|blocked)\s+│ .*? │ (PASS|FAIL) │", text)
    assert "FAIL" not in text and all(mark == "PASS" for _, mark in checks)
    assert len(re.findall(r"IPv6", text)) >= 5, "the IPv6 rows of the isolation report"
    assert not _leftovers(name) and not (RUN_ROOT / name).exists()
