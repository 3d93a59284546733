"""Operator commands: `customer-config`, `bootstrap`, `demo`. Argument parsing only; the work is
in reconciler.customer_config, reconciler.bootstrap and reconciler.demo."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import customer_config as cc

DEFAULT_REPO = Path("tenants")


@click.command("customer-config")
@click.argument("tunnel", metavar="ORG/NAME")
@click.option("--format", "fmt", type=click.Choice(cc.FORMATS), default="wg-quick", show_default=True,
              help="wg-quick file, MikroTik RouterOS script, Grandstream GDMS steps, or QR code")
@click.option("--repo", "repo_path", type=click.Path(path_type=Path, file_okay=False),
              default=DEFAULT_REPO, show_default=True, help="config repository root")
@click.option("--gateway", help="refuse unless the tunnel belongs to this gateway")
@click.option("--secret-dir", type=click.Path(path_type=Path, file_okay=False),
              default=cc.DEFAULT_SECRET_DIR, show_default=True,
              help="holds psk.secret (and private.key, read only when gateway.yaml lacks public_key)")
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False),
              help="write to this file (mode 0600) instead of stdout; qr default: ORG-NAME.png")
def customer_config_cmd(tunnel: str, fmt: str, repo_path: Path, gateway: str | None,
                        secret_dir: Path, output: Path | None) -> None:
    """Print the customer-side config of a tunnel (contains its preshared key: run on the host)."""
    try:
        config = cc.load(repo_path, tunnel, gateway=gateway, secret_dir=secret_dir)
        if fmt == "qr":
            qr = cc.render_qr(config)
            target = output or Path(f"{config.org}-{config.name}.png")
            cc.write_private_file(target, qr.png)
            click.echo(qr.terminal, nl=False)
            click.echo(f"QR code of the wg-quick config of {config.ident} written to {target} "
                       "(mode 0600; it holds the preshared key). The customer adds the router's "
                       "own private key after importing it.", err=True)
            return
        text = cc.render(config, fmt)
    except cc.CustomerConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if output is None:
        click.echo(text, nl=False)
    else:
        cc.write_private_file(output, text.encode())
        click.echo(f"{fmt} config of {config.ident} written to {output} (mode 0600)", err=True)


def register(group: click.Group) -> None:
    group.add_command(customer_config_cmd)
    for name in ("bootstrap_cmd", "demo_cmd"):
        command = getattr(sys.modules[__name__], name, None)
        if command is not None:
            group.add_command(command)
