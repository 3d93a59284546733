"""`tunnelctl`: the command line. Each submodule parses arguments for one area and calls the
library; no module here does reconcile work itself.

The top layer: may import every other package of reconciler; none of them imports it.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from reconciler.cli.common import EXIT_USAGE

# Command name -> the module that defines it (each exposes `register(group)`). Modules are
# imported only when one of their commands runs, so `tunnelctl validate` does not pay for
# importing the engine, lab and service (about half a second).
COMMANDS: dict[str, str] = {
    "init": "repo", "validate": "repo", "new": "repo", "schema": "repo",
    "plan": "engine", "apply": "engine",
    "lab": "lab",
    "run": "service", "reconcile": "service", "suspend": "service", "resume": "service",
    "status": "service",
    "customer-config": "operator", "bootstrap": "operator", "demo": "operator",
    "firewall": "host", "interface": "host",
}


class LazyGroup(click.Group):
    """Loads a command's module on first use. Every usage error exits 64, never click's 2,
    which is "there are changes" under --detailed-exitcode."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            setattr(exc, "exit_code", EXIT_USAGE)  # noqa: B010 (a ClassVar to mypy)
            raise

    def invoke(self, ctx: click.Context) -> Any:
        # Subcommands parse their arguments (and may raise UsageError) inside this call.
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            setattr(exc, "exit_code", EXIT_USAGE)  # noqa: B010 (a ClassVar to mypy)
            raise

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        scratch = click.Group()
        importlib.import_module(f"{__name__}.{module}").register(scratch)
        return scratch.commands.get(cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="reconciler")
def main() -> None:
    """GitOps reconciler for per-organisation WireGuard customer tunnels."""
