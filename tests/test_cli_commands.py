"""The lazy command map in reconciler.cli matches what each module really registers."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

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
    assert res.exit_code == 2 and "--base and --head go together" in res.output


def test_validate_does_not_import_the_engine() -> None:
    code = ("import sys; from reconciler.cli import main\n"
            "try:\n    main(['validate', 'tenants'])\nexcept SystemExit as e:\n    rc = e.code\n"
            "print(rc, 'reconciler.engine.cycle' in sys.modules, 'reconciler.lab' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[-3:] == ["0", "False", "False"]
