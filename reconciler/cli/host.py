"""`tunnelctl firewall load` and `tunnelctl interface run`: what the boot units start.

Argument parsing only; the work is in reconciler.engine.hostboot. Both read the service's
settings (state_dir for the persisted table, netns for labs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from reconciler.cli.common import config_option, host_settings


@click.group("firewall")
def firewall_group() -> None:
    """The persisted nftables table (tunnelctl-firewall.service)."""


@firewall_group.command("load")
@config_option
@click.option("--interface", help="close this interface when nothing was persisted yet "
              "[default: the settings' interface]")
@click.option("--if-absent", is_flag=True, help="do nothing when our table is already loaded")
def firewall_load(config: Path | None, interface: str | None, if_absent: bool) -> None:
    """Load the table the last verified cycle persisted (fail-closed table if none)."""
    from reconciler.engine.hostboot import firewall_path, load_firewall
    from reconciler.engine.runner import CommandError, Runner

    s, _ = host_settings(config)
    path = firewall_path(s.state_dir, s.netns)
    try:
        done = load_firewall(Runner(netns=s.netns), path, interface or s.interface,
                             only_if_absent=if_absent)
    except (CommandError, OSError) as exc:
        raise click.ClickException(f"cannot load the tunnelctl table: {exc}") from None
    click.echo(f"tunnelctl firewall: {done}", err=True)


@click.group("interface")
def interface_group() -> None:
    """The tenant interface's life (tunnelctl-interface@.service)."""


@interface_group.command("run")
@config_option
@click.argument("name")
def interface_run(config: Path | None, name: str) -> None:
    """Load the table if absent, create NAME (kernel WireGuard, else a supervised
    wireguard-go in the foreground), signal READY=1, and stay until stopped."""
    from reconciler.engine.hostboot import firewall_path, run_interface
    from reconciler.engine.nftables import NftValueError, ifname
    from reconciler.engine.runner import CommandError, Runner
    from reconciler.service.logs import configure
    from reconciler.service.sdnotify import Notifier

    try:
        ifname(name)
    except NftValueError as exc:
        raise click.BadParameter(str(exc)) from None
    s, _ = host_settings(config)
    configure(s.log_format)
    notifier = Notifier()
    try:
        code = run_interface(name, firewall_path(s.state_dir, s.netns),
                             runner=Runner(netns=s.netns), ready=notifier.ready)
    except (CommandError, OSError) as exc:
        raise click.ClickException(f"interface {name}: {exc}") from None
    sys.exit(code)


def register(group: click.Group) -> None:
    group.add_command(firewall_group)
    group.add_command(interface_group)
