"""`tunnelctl`: the command line. Each submodule parses arguments for one area and calls the
library; no module here does reconcile work itself.

The top layer: may import every other package of reconciler; none of them imports it.
"""

from __future__ import annotations

import importlib

import click

# Command name -> the module that defines it (each exposes `register(group)`). Modules are
# imported only when one of their commands runs, so `tunnelctl validate` does not pay for
# importing the engine, lab and service (about half a second).
COMMANDS: dict[str, str] = {
    "validate": "repo", "new": "repo", "schema": "repo",
    "plan": "engine", "apply": "engine",
    "lab": "lab",
    "run": "service", "reconcile": "service", "suspend": "service", "resume": "service",
    "status": "service",
    "customer-config": "operator", "bootstrap": "operator", "demo": "operator",
}


class LazyGroup(click.Group):
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
