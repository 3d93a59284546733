"""`tunnelctl plan` and `tunnelctl apply`: argument parsing and output only; the work is in
reconciler.engine.cycle.reconcile.

Exit codes (terraform's -detailed-exitcode): 0 no changes (or changes without
--detailed-exitcode), 2 changes with --detailed-exitcode, 1 error, 64 wrong usage.
Host settings are the service's (toml + TUNNELCTL_*), flags winning.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from reconciler.cli.common import (
    EXIT_CHANGES,
    EXIT_ERROR,
    EXIT_OK,
    Decorator,
    banner,
    config_option,
    detailed_exitcode_option,
    host_settings,
    output_option,
    pick_path,
    repo_option,
    repo_root,
)
from reconciler.engine.commands import render_commands
from reconciler.engine.cycle import HostTarget, ReconcileResult, reconcile
from reconciler.repo.discovery import find_root
from reconciler.repo.state import GatewayChoiceError, load_repo
from reconciler.service.handapply import ancestry_refusal, hand_apply_guard

STYLE = {"+": "green", "~": "yellow", "-": "red"}
# Steps that fail before a plan exists: printing the (empty) plan would say "No changes".
NO_PLAN_STEPS = frozenset({"load", "render", "lock", "observe"})


def _target_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts: list[Decorator] = [
        click.argument("path", type=click.Path(path_type=Path, file_okay=False, exists=True),
                       required=False),
        repo_option,
        config_option,
        click.option("--gateway", help="gateway to reconcile [default: settings, or the repo's "
                     "only one]"),
        click.option("--netns", help="network namespace holding the interface (lab)"),
        click.option("--interface", help="interface name [default: settings, or the gateway "
                     "file's]"),
        click.option("--secret-dir", type=click.Path(path_type=Path, file_okay=False),
                     help="holds private.key and psk.secret [default: settings, /etc/tunnelctl]"),
        click.option("--config-dir", type=click.Path(path_type=Path, file_okay=False),
                     help="where <interface>.conf is written [default: settings, "
                     "/etc/wireguard]"),
        detailed_exitcode_option,
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _run(path: Path, config: Path | None, flags: dict[str, Any], fmt: str, detailed: bool,
         dry_run: bool, show_commands: bool = False, force: bool = False) -> None:
    root = repo_root(path)
    settings, source = host_settings(config, **flags)
    # A one-shot process with no threads yet: parsing may fork onto every core (as `validate`).
    repo = load_repo(root, jobs=os.cpu_count() or 1)
    if repo.problems:
        # Bad input never reaches the host: list every problem, touch nothing.
        for problem in repo.problems:
            click.echo(str(problem), err=True)
        click.echo(f"error: {len(repo.problems)} problem(s) in {root}; the host was not touched",
                   err=True)
        sys.exit(EXIT_ERROR)
    try:
        gw = repo.gateway(settings.gateway)
    except GatewayChoiceError as exc:
        raise click.ClickException(f"{root}: {exc}") from None
    interface = settings.interface or gw.interface
    where = {"gateway": gw.name, "interface": interface, "netns": settings.netns,
             "repo": str(root), "secret_dir": str(settings.secret_dir), "settings": source}
    if fmt != "json":  # JSON carries it as "target": stdout stays one document
        banner(settings=source, gateway=gw.name, interface=interface, netns=settings.netns,
               repo=root, extra=f"secrets {settings.secret_dir}")
    # The service's checkpoints and persisted table when state_dir is configured; otherwise the
    # engine's default (the host's, or a lab's own folder for a namespace).
    state_dir = settings.state_dir if "state_dir" in settings.model_fields_set else None
    target = HostTarget(netns=settings.netns, interface=settings.interface,
                        secret_dir=settings.secret_dir, config_dir=settings.config_dir,
                        lock_timeout=settings.lock_timeout, state_dir=state_dir)
    guard = None
    if not dry_run and not force:  # the service's guards, for a hand apply too
        refusal = ancestry_refusal(root, settings.state_dir)
        if refusal is not None:
            click.echo(f"error: {refusal}; the host was not touched", err=True)
            sys.exit(EXIT_ERROR)
        guard = hand_apply_guard(settings)
    result = reconcile(repo, target, gateway=gw.name, dry_run=dry_run, guard=guard,
                       show_commands=show_commands)
    if fmt == "json":
        click.echo(json.dumps({"target": where, **_result_json(result, dry_run)}, indent=2))
    else:
        _print_text(result, dry_run)
    if result.error:
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_CHANGES if detailed and result.changed else EXIT_OK)


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
    if not (result.error and result.failed_step in NO_PLAN_STEPS):
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
@output_option("text", "json", "markdown",
               help="markdown only with --base/--head (the pull-request comment)")
@click.option("--base", metavar="REF", help="compare two commits instead of repo vs host")
@click.option("--head", metavar="REF", help="the commit to compare with --base")
def plan_cmd(path: Path | None, repo: Path | None, config: Path | None, gateway: str | None,
             netns: str | None, interface: str | None, secret_dir: Path | None,
             config_dir: Path | None, detailed_exitcode: bool, fmt: str, base: str | None,
             head: str | None) -> None:
    """Show what apply would change on the host (reads only).

    With --base/--head: what merging head into base changes in the desired state, per org,
    read from git objects; needs neither root nor a host (pull-request plans). Exit 0 planned,
    2 changes (with --detailed-exitcode), 1 invalid head or error."""
    path = pick_path(repo, path)
    if base or head:
        if not (base and head):
            raise click.UsageError("--base and --head go together")
        code = run_commit_plan(find_root(path) or path, base, head, fmt)
        sys.exit(EXIT_OK if code == EXIT_CHANGES and not detailed_exitcode else code)
    if fmt == "markdown":
        raise click.UsageError("-o markdown needs --base and --head")
    flags = {"gateway": gateway, "netns": netns, "interface": interface,
             "secret_dir": secret_dir, "config_dir": config_dir}
    _run(path, config, flags, fmt, detailed_exitcode, True)


def run_commit_plan(repo_path: Path, base: str, head: str, output: str) -> int:
    """Print the desired-state plan of merging head into base; 0 no change, 2 changes,
    1 invalid head or unreadable input (the command maps 2 to 0 without --detailed-exitcode)."""
    from reconciler.gitops.prplan import PlanInputError, diff_commits
    from reconciler.gitops.prplan_render import RENDERERS

    if output not in RENDERERS:
        click.echo(f"error: unknown output {output!r}; choose {', '.join(RENDERERS)}", err=True)
        return EXIT_ERROR
    try:
        diff = diff_commits(repo_path, base, head)
    except PlanInputError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_ERROR
    click.echo(RENDERERS[output](diff), nl=False)
    if not diff.ok:
        return EXIT_ERROR
    return EXIT_CHANGES if diff.has_changes else EXIT_OK


@click.command("apply")
@_target_options
@output_option("text", "json")
@click.option("--dry-run", is_flag=True,
              help="print the plan and the exact commands (secrets redacted); change nothing")
@click.option("--force", is_flag=True,
              help="apply even a tree that does not contain the commit the service applied, "
                   "and even a plan removing more than max_removal_share of the tunnels")
def apply_cmd(path: Path | None, repo: Path | None, config: Path | None, gateway: str | None,
              netns: str | None, interface: str | None, secret_dir: Path | None,
              config_dir: Path | None, detailed_exitcode: bool, fmt: str,
              dry_run: bool, force: bool) -> None:
    """Converge the host to the repo: firewall, interface, peers, routes, config file.

    Verifies by observing again and rolls back to the previous state on any failure. Like the
    service, refuses a checkout behind the service's applied commit and a plan removing too
    many tunnels, unless --force. Exit 0
    done, 2 changes made or (with --dry-run) to make, with --detailed-exitcode; 1 error."""
    flags = {"gateway": gateway, "netns": netns, "interface": interface,
             "secret_dir": secret_dir, "config_dir": config_dir}
    _run(pick_path(repo, path), config, flags, fmt, detailed_exitcode, dry_run,
         show_commands=dry_run, force=force)


def register(group: click.Group) -> None:
    group.add_command(plan_cmd)
    group.add_command(apply_cmd)
