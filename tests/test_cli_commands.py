"""The lazy command map in reconciler.cli matches what each module really registers."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner

from reconciler.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parent.parent


def test_every_registered_command_is_mapped_to_its_module() -> None:
    registered: dict[str, str] = {}
    for module in sorted(set(COMMANDS.values())):
        group = click.Group()
        importlib.import_module(f"reconciler.cli.{module}").register(group)
        registered.update({name: module for name in group.commands})
    assert registered == COMMANDS


def test_help_lists_every_command() -> None:
    out = CliRunner().invoke(main, ["--help"]).output
    for name in COMMANDS:
        assert f"  {name} " in out


def test_plan_base_head_needs_both() -> None:
    res = CliRunner().invoke(main, ["plan", "--base", "HEAD", str(ROOT / "tenants")])
    assert res.exit_code == 64 and "--base and --head go together" in res.output


def test_validate_does_not_import_the_engine() -> None:
    code = ("import sys; from reconciler.cli import main\n"
            "try:\n    main(['validate', 'tenants'])\nexcept SystemExit as e:\n    rc = e.code\n"
            "print(rc, 'reconciler.engine.cycle' in sys.modules, 'reconciler.lab' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[-3:] == ["0", "False", "False"]


def test_apply_dry_run_prints_the_commands_and_plan_does_not(monkeypatch: Any) -> None:
    # The cycle is faked (no host needed); what is checked is what the CLI asks for and prints.
    from reconciler.cli import engine as cli_engine
    from reconciler.engine.commands import commands_for
    from reconciler.engine.cycle import ReconcileResult
    from reconciler.engine.hoststate import Peer, Secrets
    from reconciler.engine.plan import AddPeer, Plan
    from reconciler.engine.wgkeys import keypair

    priv, (psk, pub) = keypair()[0], keypair()
    plan = Plan((AddPeer(Peer(pub, ("10.20.0.6/32",), "d", 25, owner="acme/hq"), "acme/hq"),))
    asked: list[bool] = []

    def fake_reconcile(*_: Any, show_commands: bool = False, **__: Any) -> ReconcileResult:
        asked.append(show_commands)
        steps = (commands_for(plan, "wg1", Secrets(priv, {pub: psk}), uapi=False)
                 if show_commands else None)
        return ReconcileResult(plan, False, False, None, None, {}, 0, commands=steps)

    monkeypatch.setattr(cli_engine, "reconcile", fake_reconcile)
    applied = CliRunner().invoke(main, ["apply", str(ROOT / "tenants"), "--dry-run"])
    planned = CliRunner().invoke(main, ["plan", str(ROOT / "tenants")])
    assert asked == [True, False]
    assert applied.exit_code == 0 and planned.exit_code == 0
    assert applied.output.startswith(planned.output)
    assert "Commands" not in planned.output
    extra = applied.output[len(planned.output):]
    assert "Commands apply would run (secrets redacted):" in extra
    assert (f"[peers] wg set wg1 peer {pub} preshared-key <0600 file psk0: (redacted)> "
            "persistent-keepalive 25 allowed-ips 10.20.0.6/32") in extra
    assert psk not in applied.output and priv not in applied.output
