"""`tunnelctl run | reconcile | suspend | resume | status`: the service's command line.

Argument parsing and output only; the work is in reconciler.service.loop / controller / status.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from reconciler.cli.common import EXIT_ERROR, EXIT_OK, config_option, host_settings, output_option
from reconciler.service.settings import Settings

if TYPE_CHECKING:
    from reconciler.service.status import StatusReport

_config_option = config_option


def _settings(config: Path | None, **overrides: Any) -> Settings:
    return host_settings(config, **overrides)[0]


@click.command("run")
@_config_option
@click.option("--interval", type=float, help="seconds between cycles (overrides the config)")
@click.option("--allow-empty", is_flag=True, default=None,
              help="allow a commit that removes every tenant")
@click.option("--accept-rewrites", is_flag=True, default=None,
              help="apply a head that does not descend from the applied commit")
@click.option("--max-removal-share", type=click.FloatRange(0, 1),
              help="refuse commits removing more than this share of tenants")
def run_cmd(config: Path | None, interval: float | None, allow_empty: bool | None,
            accept_rewrites: bool | None, max_removal_share: float | None) -> None:
    """Run the reconcile service (what the systemd unit starts)."""
    from reconciler.service.logs import configure
    from reconciler.service.loop import AlreadyRunning, Service

    s = _settings(config, interval=interval, allow_empty=allow_empty,
                  accept_rewrites=accept_rewrites, max_removal_share=max_removal_share)
    if not s.repo_url:
        raise click.ClickException("no repo_url: set it in the config file or $TUNNELCTL_REPO_URL")
    configure(s.log_format)
    try:
        sys.exit(Service(s).run())
    except AlreadyRunning as exc:
        raise click.ClickException(str(exc)) from None


def _signal_service(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise click.ClickException(f"service pid {pid} vanished; try again") from None


def _wait_for_cycle(s: Settings, since: float, timeout: float) -> list[dict[str, Any]]:
    from reconciler.service.state import StateStore

    store = StateStore(s.state_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = store.load()
        except ValueError:
            state = None
        if state is not None and state.phase != "Reconciling":
            new = [h.model_dump() for h in state.history if h.started >= since]
            if new:
                return new
        time.sleep(0.1)
    raise click.ClickException(f"no cycle finished within {timeout:g}s; see `tunnelctl status`")


@click.command("reconcile")
@_config_option
@click.option("--approve-removal", is_flag=True,
              help="approve the refused head commit although it removes many/all tenants")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="wait for the running service to finish the cycle")
@click.option("--timeout", type=float, default=120.0, show_default=True)
@output_option("text", "json")
def reconcile_cmd(config: Path | None, approve_removal: bool, wait: bool, timeout: float,
                  fmt: str) -> None:
    """Run a cycle now: signal the running service, or do one cycle here if none runs."""
    from reconciler.service.loop import run_once, running_pid
    from reconciler.service.state import StateStore

    s = _settings(config)
    store = StateStore(s.state_dir)
    if approve_removal:
        state = store.load()
        commit = (state.attempted.commit if state.attempted and state.attempted.result == "refused"
                  else state.remote_head)
        if not commit:
            raise click.ClickException("no refused commit to approve; see `tunnelctl status`")
        store.approve_removal(commit)
        click.echo(f"approved removals of commit {commit[:12]} (this commit only)", err=True)
    pid = running_pid(s)
    if pid is not None:
        since = time.time()
        _signal_service(pid)
        if not wait:
            click.echo(f"signalled the service (pid {pid})", err=True)
            return
        results = _wait_for_cycle(s, since, timeout)
    else:
        if not s.repo_url:
            raise click.ClickException("no repo_url: set it in the config or $TUNNELCTL_REPO_URL")
        from reconciler.service.logs import configure

        configure(s.log_format)
        reports = run_once(s)
        results = [{"result": r.result, "commit": r.commit, "reason": r.reason,
                    "duration": round(r.duration, 3), "summary": r.summary} for r in reports]
    if fmt == "json":
        click.echo(json.dumps(results, indent=2))
    else:
        for r in results:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(r.get("summary", {}).items()))
            line = f"{r['result']}: {(r.get('commit') or 'none')[:12]}"
            click.echo(line + (f" ({counts})" if counts else "")
                       + (f" - {r['reason']}" if r.get("reason") else ""))
    if any(r["result"] in ("refused", "failed", "busy") for r in results[-1:]):
        sys.exit(EXIT_ERROR)


@click.command("suspend")
@_config_option
@click.option("--reason", default="", help="shown in status")
def suspend_cmd(config: Path | None, reason: str) -> None:
    """Pause applying (the service keeps running and fetching; status shows Suspended)."""
    from reconciler.service.loop import running_pid
    from reconciler.service.state import StateStore

    s = _settings(config)
    StateStore(s.state_dir).suspend(reason, by=getpass.getuser())
    pid = running_pid(s)
    if pid is not None:
        _signal_service(pid)
    click.echo("suspended: no changes will be applied until `tunnelctl resume`")


@click.command("resume")
@_config_option
def resume_cmd(config: Path | None) -> None:
    """Resume applying after `tunnelctl suspend` (a cycle starts at once)."""
    from reconciler.service.loop import running_pid
    from reconciler.service.state import StateStore

    s = _settings(config)
    was = StateStore(s.state_dir).resume()
    pid = running_pid(s)
    if pid is not None:
        _signal_service(pid)
    click.echo("resumed" if was else "was not suspended")


@click.command("status")
@_config_option
@output_option("text", "json")
@click.option("--live/--no-live", default=True, show_default=True,
              help="read handshakes and bytes from the live interface")
def status_cmd(config: Path | None, fmt: str, live: bool) -> None:
    """Service state and every tunnel of this gateway (works without the service running).

    Exit 0 when the service runs, is Ready and has applied the remote head; 1 otherwise (not
    running, never ran, degraded, stalled, suspended or behind), with the reasons."""
    from reconciler.service.state import StateStore
    from reconciler.service.status import collect_status, render_status

    settings, source = host_settings(config)
    report = collect_status(settings, live=live)
    if report.running_pid is None and (report.state.phase == "Starting"
                                       or not StateStore(settings.state_dir).path.exists()):
        # "Starting" is what the state file says before a first cycle; nothing is starting.
        report = dataclasses.replace(report, phase="NotStarted", message=(
            f"the service has not run a cycle on this host (no state in {settings.state_dir})"))
    problems = unhealthy(report)
    if fmt == "json":
        data = {**report.to_json(), "healthy": not problems, "problems": problems,
                "settings": source}
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        # Piped output (scripts, CI logs) gets a wide table instead of 80 squeezed columns.
        render_status(report, Console(width=None if sys.stdout.isatty() else 200))
        click.echo(f"settings {source}", err=True)
        for problem in problems:
            click.echo(f"not healthy: {problem}", err=True)
    sys.exit(EXIT_ERROR if problems else EXIT_OK)


def unhealthy(report: StatusReport) -> list[str]:
    """Why a monitoring script should not be content; empty when all is well."""
    st = report.state
    problems = []
    if report.running_pid is None:
        problems.append("the service is not running")
    if report.phase not in ("Ready", "Reconciling"):
        problems.append(f"state is {report.phase}: {report.message}")
    if st.applied is None:
        problems.append("nothing applied yet")
    elif st.remote_head and st.remote_head != st.applied.commit:
        problems.append(f"behind: applied {st.applied.commit[:12]}, remote head "
                        f"{st.remote_head[:12]}")
    return problems


def register(group: click.Group) -> None:
    for cmd in (run_cmd, reconcile_cmd, suspend_cmd, resume_cmd, status_cmd):
        group.add_command(cmd)
