"""The exit-code contract, command by command: 0 ok / no changes, 1 error, 2 changes only with
--detailed-exitcode, 64 wrong usage (never 2); and one spelling for the same thing everywhere."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import git
import pytest
from click.testing import CliRunner, Result
from repo_kit import ROOT, TENANTS, copy_project, key

from reconciler.cli import COMMANDS, main
from reconciler.engine.cycle import ReconcileResult
from reconciler.engine.hoststate import Peer
from reconciler.engine.plan import AddPeer, Plan


def cli(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


@pytest.fixture(autouse=True)
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Host settings in a temporary folder, as the service would read them."""
    for name in ("state", "run", "secrets"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("TUNNELCTL_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("TUNNELCTL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("TUNNELCTL_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("TUNNELCTL_SECRET_DIR", str(tmp_path / "secrets"))
    monkeypatch.chdir(ROOT)
    return tmp_path


SUBCOMMANDS = sorted(c for c in COMMANDS if c != "lab") + ["lab up", "lab down", "lab status"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_usage_errors_exit_64_and_help_0(command: str) -> None:
    assert cli(*command.split(), "--no-such-flag").exit_code == 64
    assert cli(*command.split(), "--help").exit_code == 0
    assert cli("no-such-command").exit_code == 64


def test_o_is_a_format_and_f_a_file_everywhere() -> None:
    for command in ("validate", "plan", "apply", "status", "reconcile", "customer-config"):
        text = cli(command, "--help").output
        assert "-o, --output [" in text, command  # a choice of formats, never a path
    assert "-f, --out-file FILE" in cli("customer-config", "--help").output
    assert "markdown" not in cli("apply", "--help").output
    for command in ("validate", "new", "schema", "plan", "apply", "customer-config", "bootstrap"):
        assert "--repo PATH" in cli(command, "--help").output, command


def test_repo_commands(tmp_path: Path) -> None:
    assert cli("validate").exit_code == 0
    assert cli("validate", "--repo", "tenants", "-o", "json").output.strip() == "[]"
    assert cli("validate", "-o", "yaml").exit_code == 64
    assert cli("validate", "--repo", str(tmp_path)).exit_code == 1  # no config repo there
    assert cli("schema", "--check").exit_code == 0
    assert cli("schema", "--check", "--out-dir", str(tmp_path / "none")).exit_code == 1
    project = copy_project(tmp_path)
    made = cli("new", "zulu", "a", "--pubkey", key("z"), "--repo", str(project / "tenants"))
    assert made.exit_code == 0, made.output
    again = cli("new", "zulu", "a", "--pubkey", key("z"), "--repo", str(project / "tenants"))
    assert again.exit_code == 1 and "already exists" in again.output
    assert cli("new", "zulu", "b", "--repo", str(project / "tenants")).exit_code == 64


def _commits(tmp_path: Path) -> Path:
    project = copy_project(tmp_path)
    repo = git.Repo.init(project)
    repo.git.add("-A")
    repo.git.commit("-qm", "base", author="t <t@e.x>", env={"GIT_COMMITTER_NAME": "t",
                                                            "GIT_COMMITTER_EMAIL": "t@e.x"})
    repo.git.tag("base")
    return project


def test_plan_base_head(tmp_path: Path) -> None:
    project = _commits(tmp_path)
    tenants = str(project / "tenants")
    assert cli("plan", "--repo", tenants, "--base", "base", "--head", "HEAD").exit_code == 0
    assert cli("plan", tenants, "--base", "base", "--head", "HEAD",
               "--detailed-exitcode").exit_code == 0
    assert cli("new", "zulu", "a", "--pubkey", key("z"), "--repo", tenants).exit_code == 0
    repo = git.Repo(project)
    repo.git.add("-A")
    repo.git.commit("-qm", "zulu", author="t <t@e.x>", env={"GIT_COMMITTER_NAME": "t",
                                                            "GIT_COMMITTER_EMAIL": "t@e.x"})
    changes = cli("plan", "--repo", tenants, "--base", "base", "--head", "HEAD")
    assert changes.exit_code == 0 and "+ zulu/a" in changes.output  # as terraform: 0
    assert cli("plan", "--repo", tenants, "--base", "base", "--head", "HEAD",
               "--detailed-exitcode").exit_code == 2
    assert cli("plan", "--repo", tenants, "--base", "base", "--head", "nope").exit_code == 1
    assert cli("plan", "--repo", tenants, "--base", "base").exit_code == 64
    assert cli("plan", "--repo", tenants, "-o", "markdown").exit_code == 64
    assert cli("plan", "--repo", tenants, str(TENANTS), "--base", "base",
               "--head", "HEAD").exit_code == 64  # the repo given twice, differently
    assert cli("apply", "--repo", tenants, "-o", "markdown").exit_code == 64


def _fake(monkeypatch: pytest.MonkeyPatch, plan: Plan, error: str | None = None,
          step: str | None = None) -> list[Any]:
    from reconciler.cli import engine

    seen: list[Any] = []

    def fake(repo: Any, target: Any, **kw: Any) -> ReconcileResult:
        seen.append(target)
        return ReconcileResult(plan, error is None and not kw["dry_run"], error is None, error,
                               step, {}, 0)

    monkeypatch.setattr(engine, "reconcile", fake)
    return seen


ONE = Plan((AddPeer(Peer(key("p"), ("10.20.0.6/32",), "d", 25, owner="a/b"), "a/b"),))


def test_host_plan_and_apply(monkeypatch: pytest.MonkeyPatch, host: Path) -> None:
    seen = _fake(monkeypatch, Plan(()))
    res = cli("plan", "--detailed-exitcode")
    assert res.exit_code == 0 and "No changes" in res.output
    # It says what it acts on, and acts on the service's settings (here TUNNELCTL_*).
    assert "gateway cloud-1, interface wg1" in res.stderr and str(host / "secrets") in res.stderr
    assert seen[-1].secret_dir == host / "secrets"
    assert cli("plan", "--secret-dir", "/x").exit_code == 0 and seen[-1].secret_dir == Path("/x")
    _fake(monkeypatch, ONE)
    assert cli("plan").exit_code == 0
    assert cli("plan", "--detailed-exitcode").exit_code == 2
    assert cli("apply", "--detailed-exitcode").exit_code == 2
    data = json.loads(CliRunner().invoke(main, ["apply", "-o", "json"]).stdout)
    assert data["target"]["interface"] == "wg1" and data["plan"]["summary"]
    # A failure before a plan exists never prints "No changes" first.
    _fake(monkeypatch, Plan(()), "private.key missing", "render")
    res = cli("plan")
    assert res.exit_code == 1 and "No changes" not in res.output and "private.key" in res.output
    assert cli("apply", "--gateway", "cloud-9").exit_code == 1


def _secret(host: Path) -> None:
    (host / "secrets" / "psk.secret").write_text(base64.b64encode(b"\x07" * 32).decode())


def test_customer_config(host: Path, tmp_path: Path) -> None:
    assert cli("customer-config", "acme-voip/hq").exit_code == 1  # no psk.secret yet
    _secret(host)
    res = cli("customer-config", "acme-voip/hq", "-o", "mikrotik")
    assert res.exit_code == 0 and "/interface wireguard" in res.stdout
    assert cli("customer-config", "acme-voip/hq", "-o", str(tmp_path / "f")).exit_code == 64
    out = tmp_path / "hq.conf"
    assert cli("customer-config", "acme-voip/hq", "-f", str(out)).exit_code == 0
    assert "[Peer]" in out.read_text()
    # The settings file is read like the service reads it.
    toml = tmp_path / "t.toml"
    toml.write_text(f'secret_dir = "{tmp_path / "elsewhere"}"\n')
    res = cli("customer-config", "acme-voip/hq", "--config", str(toml),
              env={"TUNNELCTL_SECRET_DIR": None})  # None: unset
    assert res.exit_code == 1 and "elsewhere" in res.output
    assert cli("customer-config", "acme-voip/hq", "--config", str(tmp_path / "no.toml")
               ).exit_code == 1


def test_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    from reconciler.operator import bootstrap as bs

    findings: list[bs.Finding] = []

    def fake(target: Any, runner: Any, check: bool, dry_run: bool) -> Any:
        return bs.BootstrapReport(tuple(findings), (), False, None)

    monkeypatch.setattr(bs, "bootstrap", fake)
    res = cli("bootstrap", "--check")
    assert res.exit_code == 0 and "gateway cloud-1, interface wg1" in res.output
    findings.append(bs.Finding("conflict", "wg1", "owned by someone else"))
    assert cli("bootstrap", "--check").exit_code == 1


def _state(host: Path, **values: Any) -> None:
    base = {"phase": "Ready", "message": "ok", "updated_at": time.time(),
            "applied": {"commit": "a" * 40, "at": 1.0}, "remote_head": "a" * 40}
    (host / "state" / "state.json").write_text(json.dumps({**base, **values}))


def test_status(monkeypatch: pytest.MonkeyPatch, host: Path) -> None:
    res = CliRunner().invoke(main, ["status", "-o", "json", "--no-live"])
    data = json.loads(res.stdout)
    assert res.exit_code == 1 and data["phase"] == "NotStarted" and not data["healthy"]
    assert "Starting" not in cli("status", "--no-live").output
    _state(host)
    assert cli("status", "--no-live").exit_code == 1  # Ready, but the service is not running
    monkeypatch.setattr("reconciler.service.status.running_pid", lambda s: 4242)
    res = CliRunner().invoke(main, ["status", "-o", "json", "--no-live"])
    assert res.exit_code == 0 and json.loads(res.stdout)["healthy"], res.output
    _state(host, phase="Degraded")
    assert cli("status", "--no-live").exit_code == 1
    _state(host, remote_head="b" * 40)
    res = CliRunner().invoke(main, ["status", "-o", "json", "--no-live"])
    assert res.exit_code == 1 and any("behind" in p for p in json.loads(res.stdout)["problems"])


def test_service_controls(host: Path) -> None:
    assert cli("suspend", "--reason", "maint").exit_code == 0
    assert cli("resume").exit_code == 0
    assert cli("run").exit_code == 1  # no repo_url anywhere
    assert cli("reconcile", "--no-wait").exit_code == 1
    assert cli("run", "--interval", "-1", env={"TUNNELCTL_REPO_URL": "/x"}).exit_code == 1
    assert cli("lab", "status", "--name", "nosuch").exit_code == 1


def test_the_readme_table_lists_every_command() -> None:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Everyday commands"):text.index("## Running the service")]
    for name in COMMANDS:
        assert any(f"`{prefix}{name}{end}" in table for prefix in ("tunnelctl ", "")
                   for end in ("`", " ")), name
    assert "`-o text\\|json`" in table and "-f FILE" in table and "64" in table
