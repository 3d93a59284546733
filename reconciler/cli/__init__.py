"""`tunnelctl`: the command line. Each submodule parses arguments for one area and calls the
library; no module here does reconcile work itself."""

from __future__ import annotations

import importlib

import click

# One module per area, each exposing `register(group)`. Listed here so `tunnelctl --help`
# shows every command and a missing module is an import error, not a silent gap.
COMMAND_MODULES = ("repo", "engine", "lab", "service", "operator")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="reconciler")
def main() -> None:
    """GitOps reconciler for per-organisation WireGuard customer tunnels."""


for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as exc:  # area not built yet
        if exc.name != f"{__name__}.{_name}":
            raise
        continue
    _mod.register(main)
