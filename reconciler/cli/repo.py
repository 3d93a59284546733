"""Repository commands: `validate`, `new`, `schema`. Argument parsing and output only; the work
is done by reconciler.repo.state, reconciler.operator.provision and reconciler.repo.schema."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import click

from reconciler.operator.provision import ProvisionError, create_tunnel
from reconciler.repo.discovery import find_root, git_toplevel
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


def _root_or_exit(path: Path) -> Path:
    root = find_root(path)
    if root is None:
        raise click.ClickException(f"no gateway.yaml (or gateways/) found in {path} or above; "
                                   "point at a config repo root, an org folder or a tunnel file")
    return root


@click.command()
@click.argument("path", default=".", type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "github", "json"]), default="text",
              show_default=True, help="github prints workflow annotations for pull requests")
def validate(path: Path, fmt: str) -> None:
    """Check a config repo: every file and every rule across files.

    PATH is the repo root (the folder with gateway.yaml), an org folder or one tunnel file; the
    whole repo is always checked (cross-file rules need it) but only problems under PATH, and
    gateway problems, are shown. Exit status 0 when valid, 1 when not.
    """
    root = _root_or_exit(path)
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
    sys.exit(1 if shown else 0)


@click.command()
@click.argument("org")
@click.argument("name")
@click.option("--pubkey", required=True, help="the customer router's WireGuard public key")
@click.option("--lan", "lans", multiple=True, metavar="CIDR",
              help="a customer LAN routed through the tunnel (repeat for several)")
@click.option("--services", default=None, metavar="LIST",
              help="comma-separated services from the gateway catalog (default: its defaults)")
@click.option("--gateway", default=None, help="gateway name (needed when the repo has several)")
@click.option("--keepalive", type=int, default=25, show_default=True,
              help="persistent keepalive in seconds (0 = off)")
@click.option("--notes", default="", help="free text for operators")
@click.option("--repo", "repo_path", type=click.Path(exists=True, path_type=Path), default=".",
              show_default=True, help="config repo (or a folder inside it)")
def new(org: str, name: str, pubkey: str, lans: tuple[str, ...], services: str | None,
        gateway: str | None, keepalive: int, notes: str, repo_path: Path) -> None:
    """Add tunnel ORG/NAME with the first free subnet of the gateway's pool."""
    root = _root_or_exit(repo_path)
    wanted = None if services is None else [s.strip() for s in services.split(",") if s.strip()]
    try:
        made = create_tunnel(root, org, name, pubkey, lans=lans, services=wanted,
                             gateway=gateway, keepalive=keepalive, notes=notes)
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
    for warning in made.warnings:
        click.echo(f"warning: {warning}", err=True)


@click.command()
@click.option("--check", is_flag=True, help="exit 1 if the files differ instead of writing them")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("schemas"),
              show_default=True, help="folder for gateway.schema.json and tunnel.schema.json")
def schema(check: bool, out_dir: Path) -> None:
    """Write JSON Schema (draft-07) for gateway and tunnel files, for editors and CI."""
    if check:
        stale = outdated_schemas(out_dir)
        for path in stale:
            click.echo(f"{path} is out of date; run 'tunnelctl schema' and commit it", err=True)
        sys.exit(1 if stale else 0)
    for path in write_schemas(out_dir):
        click.echo(f"wrote {path}")


def register(group: click.Group) -> None:
    for command in (validate, new, schema):
        group.add_command(command)
