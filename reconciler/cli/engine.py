"""`tunnelctl plan` and `tunnelctl apply`: argument parsing and output only; the work is in
reconciler.engine.cycle.reconcile.

Exit codes (terraform's -detailed-exitcode): 0 no changes, 1 error, 2 changes (only with
--detailed-exitcode; without it, success is 0).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from reconciler.engine.commands import render_commands
from reconciler.engine.cycle import HostTarget, ReconcileResult, reconcile
from reconciler.repo.state import load_repo

DEFAULT_REPO = Path("tenants")
STYLE = {"+": "green", "~": "yellow", "-": "red"}


def _target_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.argument("path", type=click.Path(path_type=Path, file_okay=False, exists=True),
                       default=DEFAULT_REPO, required=False),
        click.option("--gateway", help="gateway to reconcile (default: the repo's only one)"),
        click.option("--netns", help="network namespace holding the interface (lab)"),
        click.option("--interface", help="interface name (default: the gateway file's)"),
        click.option("--secret-dir", type=click.Path(path_type=Path, file_okay=False),
                     default=HostTarget.secret_dir, show_default=True,
                     help="holds private.key and psk.secret"),
        click.option("--config-dir", type=click.Path(path_type=Path, file_okay=False),
                     default=HostTarget.config_dir, show_default=True,
                     help="where <interface>.conf is written"),
        click.option("-o", "--output", "fmt", type=click.Choice(["text", "json", "markdown"]),
                     default="text", show_default=True,
                     help="markdown only with --base/--head (the pull-request comment)"),
        click.option("--detailed-exitcode", is_flag=True,
                     help="exit 0 when nothing changes, 2 when there are changes, 1 on error"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _run(path: Path, gateway: str | None, netns: str | None, interface: str | None,
         secret_dir: Path, config_dir: Path, fmt: str, detailed: bool, dry_run: bool,
         show_commands: bool = False) -> None:
    # A one-shot process with no threads yet: parsing may fork onto every core (as `validate`).
    repo = load_repo(path, jobs=os.cpu_count() or 1)
    if repo.problems:
        # Bad input never reaches the host: list every problem, touch nothing.
        for problem in repo.problems:
            click.echo(str(problem), err=True)
        click.echo(f"error: {len(repo.problems)} problem(s) in {path}; the host was not touched",
                   err=True)
        sys.exit(1)
    target = HostTarget(netns=netns, interface=interface, secret_dir=secret_dir,
                        config_dir=config_dir)
    result = reconcile(repo, target, gateway=gateway, dry_run=dry_run,
                       show_commands=show_commands)
    if fmt == "json":
        click.echo(json.dumps(_result_json(result, dry_run), indent=2))
    else:
        _print_text(result, dry_run)
    if result.error:
        sys.exit(1)
    sys.exit(2 if detailed and result.changed else 0)


def _result_json(result: ReconcileResult, dry_run: bool) -> dict[str, Any]:
    out = {"dry_run": dry_run, "plan": result.plan.to_json(), "applied": result.applied,
           "verified": result.verified, "error": result.error, "failed_step": result.failed_step,
           "rolled_back": result.rolled_back, "writes": result.writes,
           "timings": {k: round(v, 6) for k, v in result.timings.items()}}
    if result.commands is not None:  # apply --dry-run: each command, secrets redacted
        out["commands"] = [{"step": s.name, "command": c.redacted()}
                           for s in result.commands for c in s.commands]
    return out


def _print_text(result: ReconcileResult, dry_run: bool) -> None:
    for line in result.plan.render_text().splitlines():
        click.echo(click.style(line, fg=STYLE.get(line[:1])) if line[:1] in STYLE else line)
    if result.error:
        click.echo(click.style(f"error ({result.failed_step}): {result.error}", fg="red"), err=True)
        if result.rolled_back:
            click.echo("The host was restored to its state before this apply.", err=True)
        return
    if result.commands:
        click.echo("")
        click.echo("Commands apply would run (secrets redacted):")
        click.echo(render_commands(result.commands))
    if dry_run or result.plan.empty:
        return
    ms = result.timings.get("total", 0.0) * 1000
    click.echo(click.style(f"Applied and verified ({result.writes} writes, {ms:.0f} ms).",
                           fg="green"))


@click.command("plan")
@_target_options
@click.option("--base", metavar="REF", help="compare two commits instead of repo vs host")
@click.option("--head", metavar="REF", help="the commit to compare with --base")
def plan_cmd(path: Path, gateway: str | None, netns: str | None, interface: str | None,
             secret_dir: Path, config_dir: Path, fmt: str, detailed_exitcode: bool,
             base: str | None, head: str | None) -> None:
    """Show what apply would change on the host (reads only).

    With --base/--head: what merging head into base changes in the desired state, per org,
    read from git objects; needs neither root nor a host (pull-request plans). Exit 0 no
    change, 2 changes, 1 invalid head."""
    if base or head:
        if not (base and head):
            raise click.UsageError("--base and --head go together")
        sys.exit(run_commit_plan(path, base, head, fmt))
    if fmt == "markdown":
        raise click.UsageError("-o markdown needs --base and --head")
    _run(path, gateway, netns, interface, secret_dir, config_dir, fmt, detailed_exitcode, True)


def run_commit_plan(repo_path: Path, base: str, head: str, output: str) -> int:
    """Print the desired-state plan of merging head into base; 0 no change, 2 changes,
    1 invalid head or unreadable input."""
    from reconciler.gitops.prplan import PlanInputError, diff_commits
    from reconciler.gitops.prplan_render import RENDERERS

    if output not in RENDERERS:
        click.echo(f"error: unknown output {output!r}; choose {', '.join(RENDERERS)}", err=True)
        return 1
    try:
        diff = diff_commits(repo_path, base, head)
    except PlanInputError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    click.echo(RENDERERS[output](diff), nl=False)
    if not diff.ok:
        return 1
    return 2 if diff.has_changes else 0


@click.command("apply")
@_target_options
@click.option("--dry-run", is_flag=True,
              help="print the plan and the exact commands (secrets redacted); change nothing")
def apply_cmd(path: Path, gateway: str | None, netns: str | None, interface: str | None,
              secret_dir: Path, config_dir: Path, fmt: str, detailed_exitcode: bool,
              dry_run: bool) -> None:
    """Converge the host to the repo: firewall, interface, peers, routes, config file.

    Verifies by observing again and rolls back to the previous state on any failure."""
    if fmt == "markdown":
        raise click.UsageError("-o markdown is only for `tunnelctl plan --base/--head`")
    _run(path, gateway, netns, interface, secret_dir, config_dir, fmt, detailed_exitcode, dry_run,
         show_commands=dry_run)


def register(group: click.Group) -> None:
    group.add_command(plan_cmd)
    group.add_command(apply_cmd)
