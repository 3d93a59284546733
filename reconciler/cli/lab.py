"""`tunnelctl lab up|down|status`: the namespace lab for demos and manual testing."""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import click

from reconciler.cli.common import pick_path, repo_option, repo_root
from reconciler.engine.runner import CommandError, Runner
from reconciler.lab import (
    RUN_ROOT,
    Lab,
    LabError,
    LabState,
    find_labs,
    generate_repo,
    list_namespaces,
    teardown,
)
from reconciler.lab.processes import uapi_socket_busy
from reconciler.repo.state import load_repo


def register(group: click.Group) -> None:
    group.add_command(lab)


@click.group()
def lab() -> None:
    """A throwaway lab in network namespaces: a cloud with a bare managed interface, customer
    routers with real wireguard-go, LAN hosts and an infra host. Needs root."""


def _routers_option(value: str) -> int | str:
    if value == "all":
        return "all"
    if value.isdigit():
        return int(value)
    raise click.BadParameter("use 'all' or a number of routers")


@lab.command("up")
@click.option("--name", default="demo", show_default=True, help="1-6 lowercase letters/digits")
@repo_option
@click.option("--tenants", "generate", type=click.IntRange(min=1),
              help="generate a repo with N tenants instead of using --repo")
@click.option("--routers", default="all", show_default=True,
              help="'all' (every tunnel with a known key, disabled ones included) or a number")
@click.option("--gateway", help="gateway name when the repo has several")
@click.option("--interface", help="cloud interface name (default: the gateway's, if free)")
def up(name: str, repo: Path | None, generate: int | None, routers: str, gateway: str | None,
       interface: str | None) -> None:
    """Build a lab and print the `tunnelctl apply` command that converges its cloud."""
    selection = _routers_option(routers)
    run_dir = RUN_ROOT / name
    if (run_dir / "lab.json").exists():
        raise click.ClickException(f"lab {name!r} is already up; see 'tunnelctl lab status --name "
                                   f"{name}' or remove it with 'tunnelctl lab down --name {name}'")
    keys: dict[str, str] | None = None
    repo_path = repo_root(pick_path(repo, None)) if not generate else run_dir / "repo"
    if generate:
        shutil.rmtree(repo_path, ignore_errors=True)
        run_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        keys = generate_repo(repo_path, generate).private_keys
    state = load_repo(repo_path)
    if not state.gateways:
        raise click.ClickException(f"{repo_path}: no gateway.yaml or gateways/*.yaml")
    gw = state.gateways[gateway] if gateway else next(iter(state.gateways.values()))
    if interface is None and not uapi_socket_busy(gw.interface):
        interface = gw.interface
    started = time.monotonic()
    try:
        built = Lab(repo_path, name=name, gateway=gateway, routers=selection,
                    private_keys=keys, cloud_interface=interface, detached=True).up()
    except (LabError, CommandError) as exc:
        if generate and not (run_dir / "lab.json").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise click.ClickException(str(exc)) from None
    click.echo(f"lab {name} is up in {time.monotonic() - started:.1f}s")
    _print_lab(built.describe())
    click.echo("\nconverge the cloud with:\n  " + shlex.join(built.apply_command()))
    click.echo(f"tear down with:\n  tunnelctl lab down --name {name}")


@lab.command("down")
@click.option("--name", help="the lab to remove (default: demo)")
@click.option("--all-mine", is_flag=True,
              help="every lab left by 'lab up', or by a process that no longer runs")
@click.option("--force", is_flag=True, help="also remove a lab whose test process still runs")
def down(name: str | None, all_mine: bool, force: bool) -> None:
    """Remove a lab: stop the processes it started, delete its namespaces, sockets, run dir."""
    if all_mine and name:
        raise click.UsageError("use either --name or --all-mine")
    if all_mine:
        targets = [s for s in find_labs() if s.detached or not s.owner_alive() or force]
        if not targets:
            click.echo("no lab to remove")
    else:
        label = name or "demo"
        path = RUN_ROOT / label / "lab.json"
        if not path.exists():
            stray = [ns for ns in list_namespaces() if ns.startswith(f"tcl-{label}-")]
            hint = f"; namespaces {stray} have no state file, remove them with 'ip netns del'" \
                if stray else ""
            raise click.ClickException(f"no lab {label!r} ({path} not found){hint}")
        targets = [LabState.load(path)]
        st = targets[0]
        if not st.detached and st.owner_alive() and not force:
            raise click.ClickException(
                f"lab {label!r} belongs to running process {st.owner_pid}, which removes it when "
                "it ends; add --force to remove it now")
    for st in targets:
        warnings = teardown(st)
        click.echo(f"lab {st.name} removed" + ("" if not warnings else ":"))
        for w in warnings:
            click.echo(f"  warning: {w}")


@lab.command("status")
@click.option("--name", help="show one lab (default: every lab on this machine)")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
def status(name: str | None, output: str) -> None:
    """Namespaces, processes, interfaces and router handshakes of the labs on this machine."""
    if name:
        path = RUN_ROOT / name / "lab.json"
        if not path.exists():
            raise click.ClickException(f"no lab {name!r} ({path} not found)")
        states = [LabState.load(path)]
    else:
        states = find_labs()
    reports = [_status(st) for st in states]
    if output == "json":
        click.echo(json.dumps(reports, indent=2))
        return
    if not reports:
        click.echo("no lab is up (start one with: tunnelctl lab up)")
    for rep in reports:
        _print_status(rep)


def _status(st: LabState) -> dict[str, Any]:
    existing = set(list_namespaces())
    routers = []
    listed: list[dict[str, Any]] = st.info.get("routers", [])  # type: ignore[assignment]
    for r in listed:
        routers.append({**r, "last_handshake": _last_handshake(r["interface"])})
    cloud: dict[str, Any] = st.info.get("cloud", {})  # type: ignore[assignment]
    return {
        "name": st.name, "run_dir": st.run_dir, "detached": st.detached,
        "cloud_peers": _peer_count(cloud["interface"]) if cloud else None,
        "owner_pid": st.owner_pid, "owner_alive": st.owner_alive(),
        "namespaces": {ns: ns in existing for ns in st.namespaces},
        "processes": [{"pid": p.pid, "role": p.role, "running": p.is_running()}
                      for p in st.processes],
        "info": {**st.info, "routers": routers},
    }


def _uapi_get(interface: str) -> list[str] | None:
    if not uapi_socket_busy(interface):
        return None
    try:
        return Runner().uapi(interface, "get=1\n").splitlines()
    except (OSError, CommandError):
        return None


def _peer_count(interface: str) -> int | None:
    lines = _uapi_get(interface)
    return None if lines is None else sum(1 for ln in lines if ln.startswith("public_key="))


def _last_handshake(interface: str) -> int | None:
    lines = _uapi_get(interface)
    if lines is None:
        return None
    return next((int(ln.split("=", 1)[1]) for ln in lines
                 if ln.startswith("last_handshake_time_sec=")), 0)


def _print_lab(info: dict[str, Any], *, peers: int | None = -1) -> None:
    cloud = info["cloud"]
    state = ("bare: the engine configures it" if peers == -1 else "interface gone" if peers is None
             else f"{peers} peer(s) configured")
    click.echo(f"  cloud     {cloud['netns']}  interface {cloud['interface']} ({state})")
    click.echo(f"            public key {cloud['public_key']}  secrets {cloud['secret_dir']}")
    if info.get("infra"):
        click.echo(f"  infra     {info['infra']['netns']}  {info['infra']['address']}")
    for r in info["routers"]:
        line = f"  router    {r['ident']:<28} {r['netns']:<16} {r['interface']:<14} {r['address']}"
        if r.get("host_netns"):
            line += f"  LAN host {r['host_netns']} {r['host_address']}"
        if "last_handshake" in r:
            hs = r["last_handshake"]
            line += "  handshake: " + ("interface gone" if hs is None else "none yet" if hs == 0
                                       else f"{int(time.time()) - hs}s ago")
        click.echo(line)


def _print_status(rep: dict[str, Any]) -> None:
    alive = sum(p["running"] for p in rep["processes"])
    present = sum(rep["namespaces"].values())
    owner = "detached (tunnelctl lab up)" if rep["detached"] else \
        f"owned by pid {rep['owner_pid']} ({'running' if rep['owner_alive'] else 'gone: stale'})"
    click.echo(f"lab {rep['name']}: {owner}; {present}/{len(rep['namespaces'])} namespaces, "
               f"{alive}/{len(rep['processes'])} processes running; {rep['run_dir']}")
    if rep["info"].get("cloud"):
        _print_lab(rep["info"], peers=rep["cloud_peers"])
        click.echo("  apply:    " + shlex.join(rep["info"]["apply_command"]))
    dead = [f"{p['role']} (pid {p['pid']})" for p in rep["processes"] if not p["running"]]
    if dead:
        click.echo("  not running: " + ", ".join(dead))
