"""Smoke test of `tunnelctl demo --fast`: the whole story runs green on real namespaces and
leaves nothing behind; with --keep it leaves the lab up and `tunnelctl lab down` removes it."""

from __future__ import annotations

import io
import re
import secrets

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
