"""`tunnelctl demo`: the whole product, end to end, on this machine, in a few minutes.

A namespace lab with the shipped example tenants, a real git remote (a bare repo in a temp
dir, seeded with tenants/), the reconciler applying it, live handshakes, an isolation report
from real packets, then a commit that adds a tunnel: its PR plan, the host plan, the apply, the
new router's handshake and the audit entry. Everything it creates lives in the lab's run dir
and namespaces and is removed at the end unless --keep.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import git
from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from reconciler.engine import wgkeys
from reconciler.engine.cycle import reconcile
from reconciler.engine.observe import observe
from reconciler.engine.runner import Runner
from reconciler.gitops.prplan import commit_files, diff_commits
from reconciler.gitops.prplan_render import render_text as render_pr_plan
from reconciler.lab import RUN_ROOT, Lab
from reconciler.lab.demo_checks import CheckResult, Roles, run_checks
from reconciler.operator.provision import NewTunnel, create_tunnel
from reconciler.repo.model import Tunnel, TunnelStatus
from reconciler.repo.state import RepoState, load_files, load_repo

PROJECT_TENANTS = Path(__file__).resolve().parents[2] / "tenants"
NEW_ORG, NEW_NAME = "dune-logistics", "depot"
AUTHOR = git.Actor("Demo Ops", "ops@demo.invalid")


@dataclass(frozen=True)
class DemoOptions:
    keep: bool = False
    fast: bool = False
    name: str = "demo"
    tenants: Path = PROJECT_TENANTS


# ---- the config repository (a real git remote) -------------------------------------------------


class ConfigRepo:
    """A bare repo as the remote ops push to, and a clone ops work in."""

    def __init__(self, workspace: Path, tenants: Path) -> None:
        self.bare_path = workspace / "remote.git"
        self.clone_path = workspace / "ops"
        git.Repo.init(self.bare_path, bare=True, initial_branch="main")
        self.clone = git.Repo.clone_from(str(self.bare_path), self.clone_path)
        self.clone.git.checkout("-b", "main")
        for item in sorted(tenants.iterdir()):  # the config root is the repo root
            if item.is_dir():
                shutil.copytree(item, self.clone_path / item.name)
            elif item.suffix in (".yaml", ".yml"):
                shutil.copy2(item, self.clone_path / item.name)
        self.commit_and_push("Example tenants: acme-voip, bluebird-telecom, carrot-dental")

    def commit_and_push(self, message: str) -> str:
        self.clone.git.add("-A")
        sha = self.clone.index.commit(message, author=AUTHOR, committer=AUTHOR).hexsha
        self.clone.git.push("origin", "HEAD:main")
        return sha

    def state_at(self, ref: str = "main") -> RepoState:
        """The desired state of a commit of the remote, read from git objects."""
        return load_files(commit_files(git.Repo(self.bare_path).commit(ref), ""))

    def audit_entry(self, gateway: str) -> str | None:
        try:
            commit = git.Repo(self.bare_path).commit(f"audit/{gateway}")
        except (git.BadName, ValueError):
            return None
        return str(commit.message).strip()


def add_tunnel(root: Path, public_key: str) -> NewTunnel:
    """What `tunnelctl new dune-logistics depot --pubkey ...` does: validate, allocate the first
    free subnet, write the file."""
    return create_tunnel(root, NEW_ORG, NEW_NAME, public_key, services=["sip", "rtp"],
                         notes="Added by the demo as a pull request would.")


# ---- applying: the service's cycle when available, else the engine ------------------------------


@dataclass(frozen=True)
class Applied:
    ok: bool
    how: str
    detail: str


class Applier:
    def __init__(self, lab: Lab, repo: ConfigRepo, workspace: Path) -> None:
        self.lab, self.repo = lab, repo
        self.settings = None
        try:
            from reconciler.service.loop import run_once  # noqa: F401  (the service's one-cycle entry)
            from reconciler.service.settings import Settings
        except ImportError:
            return
        self.settings = Settings(
            repo_url=str(repo.bare_path), branch="main", repo_path="", gateway=lab.gateway.name,
            state_dir=workspace / "state",
            secret_dir=lab.secret_dir, config_dir=lab.config_dir, netns=lab.netns,
            interface=lab.interface, metrics_address="", watch=False, host="demo-host")

    @property
    def how(self) -> str:
        return ("one cycle of the service (tunnelctl run): fetch, validate, apply, audit"
                if self.settings else "the engine (tunnelctl apply); no service: no audit entry")

    def apply(self) -> Applied:
        if self.settings is not None:
            from reconciler.service.loop import run_once

            reports = run_once(self.settings)
            bad = [r for r in reports if r.result in ("refused", "failed", "busy")]
            detail = "; ".join(f"{r.result} {str(r.commit)[:10]} {r.reason}".strip()
                               for r in reports)
            return Applied(not bad, "service", detail)
        result = reconcile(self.repo.state_at(), self.lab.target())
        return Applied(result.ok, "engine", result.error or f"{result.writes} host writes")


# ---- output ------------------------------------------------------------------------------------


def _age(ts: int, now: float) -> str:
    return "never" if ts == 0 else f"{max(0, int(now - ts))} s"


def _bytes(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB"


def status_table(lab: Lab, state: RepoState) -> tuple[Table, int, int]:
    """Live per-tunnel state from the cloud interface; returns (table, online, expected)."""
    observed = observe(Runner(lab.netns), lab.interface)
    now = time.time()
    table = Table(title="Tunnels on the cloud interface (live)")
    table.add_column("Tunnel", no_wrap=True)
    table.add_column("Address")
    table.add_column("Endpoint")
    table.add_column("Handshake")
    table.add_column("RX / TX")
    table.add_column("State", no_wrap=True)
    online = expected = 0
    for t in sorted(state.for_gateway(lab.gateway.name), key=lambda t: t.ident):
        st = observed.peer_status.get(t.public_key)
        if t.status is not TunnelStatus.active:
            state_text = f"[dim]{t.status.value}[/dim]"
        elif st is None:
            state_text = "[red]peer missing[/red]"
        elif st.latest_handshake and now - st.latest_handshake < 180:
            state_text = "[green]online[/green]"
        else:
            state_text = "[yellow]waiting[/yellow]"
        if t.status is TunnelStatus.active and t.ident in lab.routers:
            expected += 1
            online += "online" in state_text
        table.add_row(t.ident, str(t.customer_address), (st.endpoint if st else None) or "-",
                      _age(st.latest_handshake, now) if st else "-",
                      f"{_bytes(st.rx_bytes)} / {_bytes(st.tx_bytes)}" if st else "-",
                      state_text)
    return table, online, expected


def checks_table(results: list[CheckResult]) -> Table:
    table = Table(title="Isolation report (real packets, judged at the receiver)")
    for col in ("Check", "From", "To", "Expected", "Observed", ""):
        table.add_column(col)
    for r in results:
        mark = "[green]PASS[/green]" if r.passed else "[bold red]FAIL[/bold red]"
        table.add_row(r.name, r.source, r.destination, r.expected, r.observed, mark)
    return table


def tenants_table(state: RepoState) -> Table:
    table = Table(title="Desired state in git (tenants/)")
    for col in ("Org", "Tunnel", "Subnet", "LANs", "Services", "Status"):
        table.add_column(col)
    gateways = state.gateways
    for t in sorted(state.tunnels, key=lambda t: t.ident):
        gw = gateways.get(t.gateway)
        services = t.services if t.services is not None else (gw.default_services if gw else ())
        table.add_row(t.org, t.name, str(t.subnet), ", ".join(map(str, t.lans)) or "-",
                      ", ".join(services) or "-", t.status.value)
    return table


def choose_roles(state: RepoState, lab: Lab) -> Roles:
    """Pick demo roles from the repo: a full tenant with a LAN, a SIP-only one, etc."""
    active = [t for t in state.tunnels if t.status is TunnelStatus.active and t.ident in lab.routers]

    def services(t: Tunnel) -> tuple[str, ...]:
        return t.services if t.services is not None else lab.gateway.default_services

    full = next(t for t in active if "rtp" in services(t) and t.lans)
    sip_only = next(t for t in active if "rtp" not in services(t))
    other_lan = next((t.ident for t in active if t.lans and t.ident != full.ident), None)
    disabled = next((t.ident for t in state.tunnels if t.status is TunnelStatus.disabled
                     and t.ident in lab.routers), None)
    return Roles(full.ident, sip_only.ident, other_lan, disabled)


# ---- the demo ----------------------------------------------------------------------------------


@contextmanager
def _quiet_service_logs() -> Iterator[None]:
    logger = logging.getLogger("tunnelctl")
    old = logger.level, logger.propagate
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    try:
        yield
    finally:
        logger.setLevel(old[0])
        logger.propagate = old[1]


class Demo:
    def __init__(self, options: DemoOptions, console: Console) -> None:
        self.o, self.c = options, console
        self.workspace = RUN_ROOT / options.name / "demo"
        self.failures: list[str] = []

    def pause(self) -> None:
        if not self.o.fast:
            time.sleep(1.0)

    def section(self, n: int, title: str) -> None:
        self.c.rule(f"[bold]{n}/6  {title}")

    def run(self) -> int:
        c, o = self.c, self.o
        c.print(Panel.fit("[bold]tunnelctl demo[/bold]: GitOps for per-organisation WireGuard "
                          "customer tunnels\nEverything runs in throwaway network namespaces on "
                          "this machine; nothing leaves it.", border_style="cyan"))
        source = load_repo(o.tenants)
        if not source.ok:
            c.print("[red]the shipped tenants/ do not validate:[/red]")
            for p in source.problems:
                c.print(f"  {p}")
            return 1
        router_priv, router_pub = wgkeys.keypair()
        new_ident = f"{NEW_ORG}/{NEW_NAME}"
        run_dir = RUN_ROOT / o.name
        if run_dir.exists():
            c.print(f"[red]lab {o.name!r} already exists ({run_dir}).[/red] Remove it with "
                    f"[bold]tunnelctl lab down --name {o.name}[/bold], or pass --name.")
            return 1
        # The lab is built for the repo as it will be after the pull request, so the new
        # customer's router already exists and knocks; the cloud ignores it until the merge.
        # The allocator is deterministic (first free subnet), so the pull request made in
        # step 6 gets the same subnet.
        self.workspace.mkdir(parents=True)
        lab: Lab | None = None
        code = 1
        try:
            lab_view = self.workspace / "lab-view"
            shutil.copytree(o.tenants, lab_view)
            add_tunnel(lab_view, router_pub)
            lab = Lab(lab_view, name=o.name, private_keys={new_ident: router_priv},
                      detached=o.keep)
            code = self._run_with(lab, source, router_pub, new_ident)
        finally:
            if o.keep and lab is not None:
                c.print(Panel.fit(
                    f"Lab [bold]{o.name}[/bold] kept. Look around:\n"
                    f"  tunnelctl lab status --name {o.name}\n"
                    f"  ip netns exec {lab.netns} wg show {lab.interface}\n"
                    f"  git -C {self.workspace / 'remote.git'} log --oneline --all\n"
                    f"Remove everything (namespaces, processes, files):\n"
                    f"  [bold]tunnelctl lab down --name {o.name}[/bold]", border_style="yellow"))
            else:
                with c.status("Cleaning up: stopping processes, deleting namespaces and files"):
                    if lab is not None:
                        lab.down()
                    shutil.rmtree(run_dir, ignore_errors=True)  # created above, ours
                c.print("Cleaned up: no namespace, process or file of the demo is left.")
        return code

    def _run_with(self, lab: Lab, source: RepoState, router_pub: str, new_ident: str) -> int:
        c, o = self.c, self.o
        timeout = 0.5 if o.fast else 1.0
        self.section(1, "The config repository: tenants as YAML in git")
        with c.status("Creating a git remote (bare repo) and pushing tenants/ to it"):
            repo = ConfigRepo(self.workspace, o.tenants)
        c.print(f"remote: {repo.bare_path}  (ops work in the clone {repo.clone_path})")
        c.print(tenants_table(source))
        self.pause()

        self.section(2, "The lab: a cloud host and one router per customer")
        with c.status("Starting namespaces, veth links and wireguard-go processes"):
            lab.up()
        c.print(f"cloud namespace [bold]{lab.netns}[/bold], managed interface "
                f"[bold]{lab.interface}[/bold]; routers: {', '.join(sorted(lab.routers))}")
        c.print(f"[dim]{new_ident}'s router is already installed at the customer and knocking; "
                "the cloud ignores it until its tunnel is merged (step 6).[/dim]")
        applier = Applier(lab, repo, self.workspace)
        self.pause()

        self.section(3, "Reconcile: plan, apply, verify")
        state = repo.state_at()
        preview = reconcile(state, lab.target(), dry_run=True)
        c.print(Panel(preview.plan.render_text(), title="Plan for the host", expand=False))
        c.print(f"applied by: {applier.how}")
        with _quiet_service_logs(), c.status("Applying (firewall, peers, routes), verifying"):
            applied = applier.apply()
        self._report_apply(applied)
        self._show_audit(repo, lab)
        self.pause()

        self.section(4, "Live status: handshakes")
        self._live_status(lab, state, expect=None)
        self.pause()

        self.section(5, "Isolation, proven with real packets")
        roles = choose_roles(state, lab)
        with c.status("Probing") as status:
            results = run_checks(lab, roles, timeout=timeout,
                                 progress=lambda s: status.update(f"Probing: {s}"))
        c.print(checks_table(results))
        self.failures += [f"isolation check failed: {r.name}" for r in results if not r.passed]
        self.pause()

        self.section(6, f"A pull request adds a tunnel: {new_ident}")
        made = add_tunnel(repo.clone_path, router_pub)
        repo.clone.git.add("-A")
        repo.clone.index.commit(f"Add {new_ident}", author=AUTHOR, committer=AUTHOR)
        c.print(f"tunnelctl new {NEW_ORG} {NEW_NAME} --pubkey {router_pub}\n"
                f"  wrote {made.path.relative_to(repo.clone_path)}: subnet {made.subnet} "
                f"(first free), customer address {made.customer_address}, cloud address "
                f"{made.cloud_address}; committed on a branch")
        pr = diff_commits(repo.clone_path, "origin/main", "HEAD")
        c.print(Panel(render_pr_plan(pr), title="PR plan (what CI posts on the pull request)",
                      expand=False))
        with c.status("Merging: push to the remote"):
            repo.clone.git.push("origin", "HEAD:main")
        state = repo.state_at()
        preview = reconcile(state, lab.target(), dry_run=True)
        c.print(Panel(preview.plan.render_text(), title="Plan for the host", expand=False))
        with _quiet_service_logs(), c.status("Applying"):
            applied = applier.apply()
        self._report_apply(applied)
        self._live_status(lab, state, expect=new_ident)
        self._show_audit(repo, lab)

        c.rule()
        if self.failures:
            for f in self.failures:
                c.print(f"[bold red]✗[/bold red] {f}")
            return 1
        c.print("[bold green]✓ Demo complete:[/bold green] git → plan → apply → handshakes → "
                "isolation → PR → apply → audit.")
        return 0

    def _report_apply(self, applied: Applied) -> None:
        if applied.ok:
            self.c.print(f"[green]✓ applied[/green] ({applied.how}): {applied.detail}")
        else:
            self.c.print(f"[bold red]✗ apply failed[/bold red] ({applied.how}): {applied.detail}")
            self.failures.append(f"apply failed: {applied.detail}")

    def _show_audit(self, repo: ConfigRepo, lab: Lab) -> None:
        message = repo.audit_entry(lab.gateway.name)
        if message is None:
            self.c.print("[dim]audit: no entry (the engine alone does not audit; the service "
                         "does)[/dim]")
            return
        subject, _, body = message.partition("\n")
        try:
            fields = json.loads(body.strip())
            lines = [f"{k}: {v}" for k, v in fields.items() if v not in ("", {}, None)]
        except ValueError:
            lines = [body.strip()]
        self.c.print(Panel("\n".join([f"[bold]{subject}[/bold]", *lines]),
                           title=f"Audit entry: branch audit/{lab.gateway.name} of the remote",
                           expand=False))

    def _live_status(self, lab: Lab, state: RepoState, expect: str | None) -> None:
        deadline = time.monotonic() + (15 if self.o.fast else 25)
        table, online, expected = status_table(lab, state)
        with Live(table, console=self.c, refresh_per_second=8) as live:
            while time.monotonic() < deadline:
                table, online, expected = status_table(lab, state)
                table.caption = f"{online}/{expected} customer routers online"
                live.update(table)
                if online == expected:
                    break
                time.sleep(0.25)
        self.c.print()
        if online < expected:
            self.failures.append(f"only {online}/{expected} routers completed a handshake")
        if expect is not None:
            hs = lab.latest_handshake(expect)
            if hs:
                self.c.print(f"[green]✓ {expect}'s router completed its handshake[/green]")
            else:
                self.failures.append(f"{expect}'s router did not complete a handshake")


def run_demo(options: DemoOptions, console: Console | None = None) -> int:
    return Demo(options, console or Console()).run()
