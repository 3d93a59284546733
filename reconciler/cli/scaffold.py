"""`tunnelctl init [DIR]`: argument parsing and prompts only; the files come from
reconciler.operator.scaffold."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from reconciler.cli.common import EXIT_ERROR


def interactive() -> bool:
    return sys.stdin.isatty()


def _ask(value: Any, flag: str, text: str, default: Any = None) -> Any:
    """A value the flags left out: asked for on a terminal, a usage error (64) in a script."""
    if value is not None:
        return value
    if interactive():
        return click.prompt(text, default=default)
    if default is not None:
        return default
    raise click.UsageError(f"{flag} is required (no terminal to ask on)")


@click.command("init")
@click.argument("directory", default=".", type=click.Path(path_type=Path, file_okay=False))
@click.option("--name", help="gateway name, e.g. cloud-1 (asked for on a terminal)")
@click.option("--endpoint", metavar="HOST:PORT",
              help="public address customers' routers connect to (asked for on a terminal)")
@click.option("--address", default=None, metavar="CIDR",
              help="cloud tunnel address every customer talks to [default: 10.20.0.1/16]")
@click.option("--pool", metavar="CIDR", help="tunnel pool [default: the address's network]")
@click.option("--interface", default="wg1", show_default=True, help="WireGuard interface")
@click.option("--listen-port", type=click.IntRange(1, 65535), default=51821, show_default=True)
@click.option("--reserved", multiple=True, metavar="CIDR",
              help="infrastructure range no tenant may overlap (repeat for several)")
@click.option("--infra-interface", "infra", multiple=True, metavar="NAME",
              help="internal interface tenants must never reach, e.g. wg0 (repeat)")
@click.option("--public-key", help="the gateway's public key (printed by `tunnelctl bootstrap`)")
@click.option("--tunnelctl-repo", metavar="OWNER/NAME",
              help="GitHub repository of tunnelctl the workflows and hooks install")
@click.option("--tunnelctl-rev", metavar="COMMIT",
              help="the full commit id of tunnelctl to pin (workflows and pre-commit)")
@click.option("--hook-url", default="", metavar="URL",
              help="git URL pre-commit clones the hooks from (a mirror) "
              "[default: https://github.com/OWNER/NAME]")
def init(directory: Path, name: str | None, endpoint: str | None, address: str | None,
         pool: str | None, interface: str, listen_port: int, reserved: tuple[str, ...],
         infra: tuple[str, ...], public_key: str | None, tunnelctl_repo: str | None,
         tunnelctl_rev: str | None, hook_url: str) -> None:
    """Create a standalone config repo in DIRECTORY (default: here).

    Writes gateway.yaml, schemas/ (the editor modelines point there), .pre-commit-config.yaml
    using tunnelctl as a hook repository, GitHub workflows (validate with annotations, the pull
    request plan comment) that install the pinned tunnelctl, and a README. Missing values are
    asked for on a terminal; a script must pass them. Exit 0 when written, 1 when refused
    (nothing written), 64 when a required flag is missing."""
    from reconciler.operator.scaffold import (
        GatewaySpec,
        Pin,
        ScaffoldError,
        render_scaffold,
        write_scaffold,
    )

    spec = GatewaySpec(
        name=_ask(name, "--name", "Gateway name (e.g. cloud-1)"),
        endpoint=_ask(endpoint, "--endpoint", "Public endpoint (host:port)"),
        address=_ask(address, "--address", "Cloud tunnel address", "10.20.0.1/16"),
        pool=pool, interface=interface, listen_port=listen_port, reserved=reserved,
        infra_interfaces=infra, public_key=public_key)
    try:
        pin = Pin(_ask(tunnelctl_repo, "--tunnelctl-repo", "tunnelctl's GitHub repository "
                       "(OWNER/NAME)"),
                  _ask(tunnelctl_rev, "--tunnelctl-rev", "tunnelctl commit to pin (40 hex)"),
                  hook_url)
        written = write_scaffold(directory, render_scaffold(spec, pin))
    except ScaffoldError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"Config repo for gateway {spec.name} ready in {directory}. Next: git init; "
               "tunnelctl new ORG NAME --pubkey KEY; pre-commit install.", err=True)
