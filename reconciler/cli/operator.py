"""Operator commands: `customer-config`, `bootstrap`, `demo`. Argument parsing only; the work is
in reconciler.operator.customer_config, reconciler.operator.bootstrap and reconciler.lab.demo."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from reconciler.cli.common import (
    EXIT_ERROR,
    banner,
    config_option,
    host_settings,
    out_file_option,
    output_option,
    pick_path,
    repo_option,
    repo_root,
)
from reconciler.engine.runner import Runner
from reconciler.operator import bootstrap as bs
from reconciler.operator import customer_config as cc
from reconciler.operator.customer_keys import CustomerKeyError, read_private_key
from reconciler.repo.state import GatewayChoiceError, load_repo


@click.command("customer-config")
@click.argument("tunnel", metavar="ORG/NAME")
@output_option(*cc.FORMATS, help="wg-quick file, MikroTik RouterOS script, Grandstream GDMS "
               "steps, or QR code (a PNG file)")
@click.option("--format", "old_fmt", type=click.Choice(cc.FORMATS), hidden=True)
@out_file_option("write to this file (mode 0600) instead of stdout; qr default: ORG-NAME.png")
@repo_option
@config_option
@click.option("--gateway", help="refuse unless the tunnel belongs to this gateway "
              "[default: settings]")
@click.option("--secret-dir", type=click.Path(path_type=Path, file_okay=False),
              help="holds psk.secret (and private.key, read only when gateway.yaml lacks "
              "public_key) [default: settings, /etc/tunnelctl]")
@click.option("--private-key-file", metavar="PATH|-",
              help="the customer's own private key for this one render (wg-quick, qr: the "
              "mobile apps import only a config with one); '-' reads stdin; never stored")
def customer_config_cmd(tunnel: str, fmt: str, old_fmt: str | None, out_file: Path | None,
                        repo: Path | None, config: Path | None, gateway: str | None,
                        secret_dir: Path | None, private_key_file: str | None) -> None:
    """Print the customer-side config of a tunnel (contains its preshared key: run on the host).

    A tunnel with subnet6 on a gateway with address6 gets its IPv6 address and routes too, in
    every format. The qr format draws the code on the terminal; a PNG is written only with -f.
    Exit 0 written, 1 error."""
    fmt = old_fmt or fmt  # --format: the spelling before -o/--output
    root = repo_root(pick_path(repo, None))
    settings, source = host_settings(config, gateway=gateway, secret_dir=secret_dir)
    try:
        key = None
        if private_key_file is not None:
            key = read_private_key(sys.stdin if private_key_file == "-"
                                   else Path(private_key_file))
        config_ = cc.load(root, tunnel, gateway=settings.gateway, secret_dir=settings.secret_dir)
        click.echo(f"tunnelctl: {config_.ident} of repo {root}; secrets {settings.secret_dir}; "
                   f"settings {source}", err=True)
        if fmt == "qr":
            qr = cc.render_qr(config_, private_key=key)
            click.echo(qr.terminal, nl=False)
            if out_file is not None:  # a secret goes to disk only where asked
                cc.write_private_file(out_file, qr.png)
                click.echo(f"QR code of {config_.ident} written to {out_file} (mode 0600; it "
                           "holds the preshared key)", err=True)
            if key is None:
                click.echo("Without --private-key-file the code has no PrivateKey: the mobile "
                           "apps refuse it; routers add their own key after importing.", err=True)
            return
        text = cc.render(config_, fmt, private_key=key)
    except (cc.CustomerConfigError, CustomerKeyError) as exc:
        raise click.ClickException(str(exc)) from None
    if out_file is None:
        click.echo(text, nl=False)
    else:
        cc.write_private_file(out_file, text.encode())
        click.echo(f"{fmt} config of {config_.ident} written to {out_file} (mode 0600)", err=True)


LEVEL_STYLE = {"ok": ("ok", "green"), "missing": ("missing", "yellow"),
               "conflict": ("CONFLICT", "red"), "note": ("note", "cyan")}


def _bootstrap_target(repo_path: Path, gateway: str | None, secret_dir: Path,
                      interface: str | None, netns: str | None) -> bs.BootstrapTarget:
    state = load_repo(repo_path)
    try:
        gw = state.gateway(gateway)
    except GatewayChoiceError as exc:
        raise click.ClickException(f"{repo_path}: {exc}") from None
    for problem in state.problems:
        click.echo(f"warning: {problem} (its peers count as foreign until fixed)", err=True)
    keys = frozenset(t.public_key for t in state.tunnels if t.gateway == gw.name)
    return bs.BootstrapTarget(gw, interface or gw.interface, secret_dir, keys, netns)


@click.command("bootstrap")
@click.option("--check", is_flag=True, help="report what is missing or conflicting; change nothing")
@click.option("--dry-run", is_flag=True, help="print the steps it would take; change nothing")
@repo_option
@config_option
@click.option("--gateway", help="gateway to prepare [default: settings, or the repo's only one]")
@click.option("--netns", help="network namespace of the host (lab)")
@click.option("--interface", help="interface name [default: settings, or the gateway file's]")
@click.option("--secret-dir", type=click.Path(path_type=Path, file_okay=False),
              help="where private.key and psk.secret live (0600, never overwritten) "
              "[default: settings, /etc/tunnelctl]")
def bootstrap_cmd(check: bool, dry_run: bool, repo: Path | None, config: Path | None,
                  gateway: str | None, netns: str | None, interface: str | None,
                  secret_dir: Path | None) -> None:
    """Prepare a fresh host: gateway keys, PSK host secret, interface, firewall table.

    Safe to run again: what exists is left alone. Exit 0 done (or nothing to do), 1 when a
    conflict or an error is found."""
    root = repo_root(pick_path(repo, None))
    settings, source = host_settings(config, gateway=gateway, netns=netns, interface=interface,
                                     secret_dir=secret_dir)
    netns = settings.netns
    target = _bootstrap_target(root, settings.gateway, settings.secret_dir, settings.interface,
                               netns)
    gw = target.gateway
    banner(settings=source, gateway=gw.name, interface=target.interface, netns=netns, repo=root,
           extra=f"secrets {settings.secret_dir}")
    where = f" in netns {netns}" if netns else ""
    click.echo(f"Bootstrap of gateway {gw.name}: interface {target.interface}, UDP "
               f"{gw.listen_port}, pool {gw.pool}{where}")
    report = bs.bootstrap(target, Runner(netns=netns), check=check, dry_run=dry_run)
    for f in report.findings:
        label, colour = LEVEL_STYLE[f.level]
        click.echo(f"  {click.style(f'{label:<9}', fg=colour)} {f.subject:<16} {f.message}")
    if check:
        pass
    elif report.executed:
        click.echo("Done:" if report.steps else "Nothing to do: the host is already prepared.")
    elif report.conflicts:
        click.echo(click.style("Refusing to change anything until the conflicts are resolved.",
                               fg="red"))
    else:
        click.echo("Would do (dry run):" if report.steps else "Nothing to do.")
    if not check:
        for i, step in enumerate(report.steps, 1):
            click.echo(f"  {i}. {step}")
    if report.error:
        click.echo(click.style(f"error: {report.error}", fg="red"), err=True)
    if report.public_key:
        click.echo(f"Gateway public key: {report.public_key}")
        if gw.public_key != report.public_key:
            click.echo(f"  put it into the gateway file: public_key: {report.public_key}")
    elif not report.executed:
        click.echo("Gateway public key: generated on the real run")
    if report.conflicts or report.error:
        sys.exit(EXIT_ERROR)


@click.command("demo")
@click.option("--keep", is_flag=True, help="leave the lab running and print how to remove it")
@click.option("--fast", is_flag=True, help="no pauses between steps, shorter probe timeouts")
@click.option("--name", default="demo", show_default=True,
              help="lab name (1-6 lowercase letters/digits)")
@click.option("--repo", "repo", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="config repo to demo (default: the shipped tenants/; "
                   "examples/dual-stack adds IPv6 inside the tunnels)")
def demo_cmd(keep: bool, fast: bool, name: str, repo: Path | None) -> None:
    """Run the end-to-end demo in a throwaway namespace lab (needs root)."""
    import os

    from reconciler.lab import LabError
    from reconciler.lab.demo import DemoOptions, run_demo

    if os.geteuid() != 0:
        raise click.ClickException("the demo builds network namespaces: run it as root "
                                   "(sudo ./scripts/demo)")
    try:
        options = DemoOptions(keep=keep, fast=fast, name=name)
        if repo is not None:
            options = DemoOptions(keep=keep, fast=fast, name=name, tenants=repo.resolve())
        code = run_demo(options)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


def register(group: click.Group) -> None:
    group.add_command(customer_config_cmd)
    for name in ("bootstrap_cmd", "demo_cmd"):
        command = getattr(sys.modules[__name__], name, None)
        if command is not None:
            group.add_command(command)
