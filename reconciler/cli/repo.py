"""Repository commands: `init`, `validate`, `new`, `schema`. Argument parsing and output only;
the work is done by reconciler.operator.scaffold, reconciler.repo.state,
reconciler.operator.provision and reconciler.repo.schema."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import click

from reconciler.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    output_option,
    pick_path,
    repo_option,
    repo_root,
)
from reconciler.operator.provision import ProvisionError, create_tunnel
from reconciler.repo.discovery import git_toplevel
from reconciler.repo.problem_output import (
    display_path,
    format_github,
    format_json,
    format_text,
    in_scope,
    rebase_message,
    summary,
)
from reconciler.repo.schema import outdated_schemas, write_schemas
from reconciler.repo.state import load_repo


@click.command()
@click.argument("path", required=False, type=click.Path(exists=True, path_type=Path))
@repo_option
@output_option("text", "github", "json",
               help="github prints workflow annotations for pull requests")
@click.option("--format", "old_fmt", type=click.Choice(["text", "github", "json"]), hidden=True)
def validate(path: Path | None, repo: Path | None, fmt: str, old_fmt: str | None) -> None:
    """Check a config repo: every file and every rule across files.

    PATH (or --repo) is the repo root (the folder with gateway.yaml), an org folder or one
    tunnel file; the whole repo is always checked (cross-file rules need it) but only problems
    under PATH, and gateway problems, are shown. Exit 0 when valid, 1 when not.
    """
    fmt = old_fmt or fmt  # --format: the spelling before -o/--output
    path = pick_path(repo, path)
    root = repo_root(path)
    state = load_repo(root, jobs=os.cpu_count() or 1)
    resolved = path.resolve()
    scope = "" if resolved == root else resolved.relative_to(root).as_posix() \
        if resolved.is_relative_to(root) else ""
    base = (git_toplevel(root) or Path.cwd()) if fmt == "github" else Path.cwd()
    shown = [replace(p, message=rebase_message(p.message, root, base))
             for p in state.problems if in_scope(p, scope)]
    paths = [display_path(root, p.file, base) for p in shown]
    if fmt == "json":
        click.echo(format_json(shown, paths))
    else:
        lines = format_github(shown, paths) if fmt == "github" else format_text(shown, paths)
        for line in lines:
            click.echo(line)
        click.echo(summary(state, shown), err=fmt == "github")
    sys.exit(EXIT_ERROR if shown else EXIT_OK)


@click.command()
@click.argument("org")
@click.argument("name")
@click.option("--pubkey", help="the customer router's WireGuard public key")
@click.option("--generate-key", is_flag=True,
              help="make the customer's key pair here: the private key (and, on a host with "
              "psk.secret, the QR code for the mobile apps) is printed once, only the public "
              "key is stored")
@click.option("--secret-dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("/etc/tunnelctl"), show_default=True,
              help="with --generate-key: where psk.secret is, for the QR code")
@click.option("--lan", "lans", multiple=True, metavar="CIDR",
              help="a customer LAN routed through the tunnel (repeat for several)")
@click.option("--subnet6", default=None, metavar="PREFIX",
              help="this IPv6 prefix instead of the first free one of pool6 (dual-stack "
              "gateways; checked like every other value)")
@click.option("--lan6", "lans6", multiple=True, metavar="CIDR",
              help="a customer IPv6 LAN (unique local) routed through the tunnel (repeat for "
              "several; dual-stack gateways)")
@click.option("--services", default=None, metavar="LIST",
              help="comma-separated services from the gateway catalog (default: its defaults)")
@click.option("--gateway", default=None, help="gateway name (needed when the repo has several)")
@click.option("--keepalive", type=int, default=25, show_default=True,
              help="persistent keepalive in seconds (0 = off)")
@click.option("--notes", default="", help="free text for operators")
@repo_option
def new(org: str, name: str, pubkey: str | None, generate_key: bool, secret_dir: Path,
        lans: tuple[str, ...], subnet6: str | None, lans6: tuple[str, ...],
        services: str | None, gateway: str | None, keepalive: int, notes: str,
        repo: Path | None) -> None:
    """Add tunnel ORG/NAME with the first free subnet of the gateway's pool (and the first free
    IPv6 prefix of its pool6 when the gateway has IPv6).

    The file is checked with every rule `validate` applies before it is written. Exit 0 when
    written, 1 when refused (nothing written), 64 for usage errors."""
    if (pubkey is None) == (not generate_key):
        raise click.UsageError("give the router's key with --pubkey, or --generate-key "
                               "(exactly one of them)")
    pair = None
    if generate_key:
        from reconciler.operator.customer_keys import new_customer_keypair

        pair = new_customer_keypair()
        pubkey = pair.public_key
    assert pubkey is not None
    root = repo_root(pick_path(repo, None))
    wanted = None if services is None else [s.strip() for s in services.split(",") if s.strip()]
    try:
        made = create_tunnel(root, org, name, pubkey, lans=lans, services=wanted,
                             gateway=gateway, keepalive=keepalive, notes=notes,
                             subnet6=subnet6, lans6=lans6)
    except ProvisionError as exc:
        for p in exc.problems:
            click.echo(f"{display_path(root, p.file, Path.cwd())}:{p.line}:{p.col}: "
                       f"{rebase_message(p.message, root, Path.cwd())}", err=True)
        raise click.ClickException(str(exc)) from None
    shown = display_path(root, made.path.relative_to(root).as_posix(), Path.cwd())
    click.echo(f"created {shown}")
    click.echo(f"  subnet            {made.subnet}")
    click.echo(f"  customer address  {made.customer_address}  (the router's tunnel address)")
    click.echo(f"  cloud address     {made.cloud_address}  (what the customer talks to)")
    if made.subnet6 is not None:
        click.echo(f"  subnet6           {made.subnet6}")
        click.echo(f"  customer address6 {made.customer_address6}  (the router's IPv6 tunnel "
                   "address)")
        click.echo(f"  cloud address6    {made.cloud_address6}")
    for warning in made.warnings:
        click.echo(f"warning: {warning}", err=True)
    if pair is not None:
        _show_new_key(root, f"{org}/{name}", pair.private_key, secret_dir)


def _show_new_key(root: Path, ident: str, private_key: str, secret_dir: Path) -> None:
    """Shown once, on the terminal only: tunnelctl keeps no copy."""
    from reconciler.operator import customer_config as cc

    click.echo(f"  private key       {private_key}")
    click.echo("  (shown once and stored nowhere: give it to the customer now; only the public "
               "key is in the tunnel file)")
    if not (secret_dir / "psk.secret").is_file():
        click.echo(f"no {secret_dir}/psk.secret here: run `tunnelctl customer-config {ident} "
                   "-o qr --private-key-file -` on the host for the QR code", err=True)
        return
    try:
        config = cc.load(root, ident, secret_dir=secret_dir)
        click.echo(cc.render_qr(config, private_key=private_key).terminal, nl=False)
    except cc.CustomerConfigError as exc:
        click.echo(f"no QR code: {exc}", err=True)


@click.command()
@click.option("--check", is_flag=True, help="exit 1 if the files differ instead of writing them")
@repo_option
@click.option("--out-dir", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              default=None, help="folder for gateway.schema.json and tunnel.schema.json "
              "[default: schemas/ of the config repo]")
@click.option("--out", "old_out", type=click.Path(path_type=Path, file_okay=False), hidden=True)
def schema(check: bool, repo: Path | None, out_dir: Path | None, old_out: Path | None) -> None:
    """Write JSON Schema (draft-07) for gateway and tunnel files, for editors and CI.

    The modelines that `init` and `new` write point at them. Exit 0 when current (or written),
    1 when --check finds one out of date."""
    out_dir = out_dir or old_out or repo_root(pick_path(repo, None)) / "schemas"
    if check:
        stale = outdated_schemas(out_dir)
        for path in stale:
            click.echo(f"{path} is out of date; run 'tunnelctl schema' and commit it", err=True)
        sys.exit(EXIT_ERROR if stale else EXIT_OK)
    for path in write_schemas(out_dir):
        click.echo(f"wrote {path}")


def register(group: click.Group) -> None:
    from reconciler.cli.scaffold import init

    for command in (init, validate, new, schema):
        group.add_command(command)
