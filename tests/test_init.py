"""`tunnelctl init`: a standalone config repo, used as ops use it, from a plain shell.

The end-to-end test runs the installed command by path with PATH=/usr/bin:/bin (no venv): init,
new, validate, pre-commit (hooks from a git snapshot of this checkout, as a hook repository),
plan --base/--head on real commits, and zizmor on the generated workflows.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from repo_kit import ROOT, TENANTS, key

from reconciler.cli import main
from reconciler.operator.scaffold import GatewaySpec, Pin, ScaffoldError, render_scaffold

TUNNELCTL = str(ROOT / ".venv" / "bin" / "tunnelctl")
ZIZMOR = str(ROOT / ".venv" / "bin" / "zizmor")
PLAIN_PATH = "/usr/bin:/bin"
REV = "0123456789abcdef0123456789abcdef01234567"
INIT_FLAGS = ["--name", "cloud-1", "--endpoint", "203.0.113.10:51821", "--reserved",
              "10.10.10.0/24", "--infra-interface", "wg0", "--tunnelctl-repo",
              "example/tunnelctl", "--tunnelctl-rev", REV]


def plain_env(**extra: str) -> dict[str, str]:
    """The environment of a shell that never activated the venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME") and not k.startswith("PRE_COMMIT")}
    env.update(PATH=PLAIN_PATH, GIT_AUTHOR_NAME="ops", GIT_AUTHOR_EMAIL="ops@example.net",
               GIT_COMMITTER_NAME="ops", GIT_COMMITTER_EMAIL="ops@example.net",
               GIT_CONFIG_GLOBAL="/dev/null", **extra)
    return env


def sh(argv: list[str], cwd: Path, env: dict[str, str], code: int = 0,
       timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout, check=False)
    assert proc.returncode == code, (f"{argv} exited {proc.returncode}, wanted {code}:\n"
                                     f"{proc.stdout}\n{proc.stderr}")
    return proc


def snapshot_of_this_checkout(dest: Path, env: dict[str, str]) -> str:
    """A git repo of this checkout's files as they are now (what pre-commit clones)."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file() and not src.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    sh(["git", "init", "-q", "-b", "main"], dest, env)
    sh(["git", "add", "-A"], dest, env)
    sh(["git", "commit", "-q", "-m", "snapshot"], dest, env)
    return sh(["git", "rev-parse", "HEAD"], dest, env).stdout.strip()


@pytest.mark.slow
def test_a_config_repo_from_init_through_the_ops_workflow(tmp_path: Path) -> None:
    env = plain_env(PRE_COMMIT_HOME=str(tmp_path / "pre-commit-home"))
    assert shutil.which("tunnelctl", path=PLAIN_PATH) is None  # only the hook envs have it
    hooks = tmp_path / "tunnelctl-src"
    rev = snapshot_of_this_checkout(hooks, env)
    # pre-commit as locked in requirements/dev.lock; called by path, PATH stays plain.
    pre_commit = str(Path(sys.executable).with_name("pre-commit"))

    cfg = tmp_path / "cfg"
    flags = [*INIT_FLAGS[:-1], rev, "--hook-url", str(hooks)]
    sh([TUNNELCTL, "init", str(cfg), *flags], tmp_path, env)
    made = sorted(p.relative_to(cfg).as_posix() for p in cfg.rglob("*") if p.is_file())
    assert made == [".github/workflows/pr-plan.yml", ".github/workflows/validate.yml",
                    ".pre-commit-config.yaml", "README.md", "gateway.yaml",
                    "schemas/gateway.schema.json", "schemas/tunnel.schema.json"]
    assert f"rev: {rev}" in (cfg / ".pre-commit-config.yaml").read_text()
    for wf in ("validate.yml", "pr-plan.yml"):
        text = (cfg / ".github" / "workflows" / wf).read_text()
        assert f"ref: {rev}" in text and "repository: example/tunnelctl" in text
    # init refuses to write over a config repo (usage is fine, so 1, not 64).
    sh([TUNNELCTL, "init", str(cfg), *flags], tmp_path, env, code=1)

    sh(["git", "init", "-q", "-b", "main"], cfg, env)
    sh([TUNNELCTL, "validate"], cfg, env)
    sh(["git", "add", "-A"], cfg, env)
    sh(["git", "commit", "-q", "-m", "init"], cfg, env)

    # A tunnel by pull request: new, validate, pre-commit, plan against main.
    sh(["git", "switch", "-q", "-c", "acme"], cfg, env)
    out = sh([TUNNELCTL, "new", "acme-voip", "hq", "--pubkey", key("acme"), "--lan",
              "192.168.10.0/24"], cfg, env).stdout
    assert "created acme-voip/hq.yaml" in out and "10.20.0.4/30" in out
    assert (cfg / "acme-voip" / "hq.yaml").read_text().startswith(
        "# yaml-language-server: $schema=../schemas/tunnel.schema.json\n")
    assert "no problems" in sh([TUNNELCTL, "validate"], cfg, env).stdout
    sh([TUNNELCTL, "validate", "-o", "github"], cfg, env)
    run = sh([pre_commit, "run", "--all-files"], cfg, env, timeout=600).stdout
    assert run.count("Passed") == 2, run
    sh(["git", "add", "-A"], cfg, env)
    sh(["git", "commit", "-q", "-m", "acme-voip/hq"], cfg, env)
    plan = sh([TUNNELCTL, "plan", "--base", "main", "--head", "HEAD"], cfg, env).stdout
    assert "+ acme-voip/hq" in plan and "Plan: 1 to add" in plan
    sh([TUNNELCTL, "plan", "--base", "main", "--head", "HEAD", "--detailed-exitcode"], cfg, env,
       code=2)
    md = sh([TUNNELCTL, "plan", "--base", "main", "--head", "HEAD", "-o", "markdown"], cfg,
            env).stdout
    assert md.startswith("### tunnelctl plan: 1 to add")
    sh([TUNNELCTL, "plan", "--base", "main"], cfg, env, code=64)

    # A broken head: validate and the hook fail, the plan says so and never shows removals.
    hq = cfg / "acme-voip" / "hq.yaml"
    hq.write_text(hq.read_text().replace("10.20.0.4/30", "10.20.0.5/30"))
    assert "acme-voip/hq.yaml:" in sh([TUNNELCTL, "validate"], cfg, env, code=1).stdout
    sh([pre_commit, "run", "--all-files"], cfg, env, code=1, timeout=300)
    sh(["git", "commit", "-q", "-am", "broken"], cfg, env)
    bad = sh([TUNNELCTL, "plan", "--base", "main", "--head", "HEAD"], cfg, env, code=1).stdout
    assert "Invalid, not applied" in bad and "to remove" not in bad

    # The workflows pass zizmor's offline audits.
    sh([ZIZMOR, "--offline", "--min-severity", "low", str(cfg / ".github" / "workflows")],
       tmp_path, env)


def test_this_projects_tenants_folder_is_laid_out_as_init_makes_it(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["init", str(tmp_path / "cfg"), *INIT_FLAGS])
    assert res.exit_code == 0, res.output
    cfg = tmp_path / "cfg"
    for rel in ("schemas/gateway.schema.json", "schemas/tunnel.schema.json"):
        assert (TENANTS / rel).read_text() == (cfg / rel).read_text()
    assert (TENANTS / "gateway.yaml").read_text().splitlines()[0] == \
        (cfg / "gateway.yaml").read_text().splitlines()[0]
    for tunnel in TENANTS.glob("*/*.yaml"):
        assert tunnel.read_text().startswith(
            "# yaml-language-server: $schema=../schemas/tunnel.schema.json\n"), tunnel


def test_init_asks_only_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = CliRunner().invoke(main, ["init", str(tmp_path / "a"), "--endpoint", "vpn.example:51821",
                                    "--tunnelctl-repo", "o/t", "--tunnelctl-rev", REV])
    assert res.exit_code == 64 and "--name is required" in res.output
    assert not (tmp_path / "a").exists()
    monkeypatch.setattr("reconciler.cli.scaffold.interactive", lambda: True)
    res = CliRunner().invoke(main, ["init", str(tmp_path / "b"), "--tunnelctl-repo", "o/t",
                                    "--tunnelctl-rev", REV],
                             input="cloud-9\nvpn.example:51821\n\n")
    assert res.exit_code == 0, res.output
    text = (tmp_path / "b" / "gateway.yaml").read_text()
    assert "name: cloud-9" in text and "address: 10.20.0.1/16" in text


@pytest.mark.parametrize("flags,words", [
    (["--endpoint", "not an endpoint"], "endpoint"),
    (["--address", "10.20.0.1/33"], "address"),
    (["--pool", "10.30.0.0/16"], "outside the pool"),
    (["--tunnelctl-rev", "v1.0"], "full 40-hex commit"),
    (["--tunnelctl-repo", "o/t\nrun: evil"], "OWNER/NAME"),
    (["--hook-url", "https://x.example/t'; rm -rf /"], "not a plain git URL"),
])
def test_init_refuses_bad_values_and_writes_nothing(tmp_path: Path, flags: list[str],
                                                    words: str) -> None:
    res = CliRunner().invoke(main, ["init", str(tmp_path / "c"), *INIT_FLAGS, *flags])
    assert res.exit_code == 1 and words in res.output, res.output
    assert not (tmp_path / "c").exists()


def test_the_gateway_key_is_written_when_known() -> None:
    pub = base64.b64encode(bytes(32)).decode()
    done = render_scaffold(GatewaySpec("cloud-2", "vpn.example:51821", public_key=pub),
                           Pin("o/t", REV))
    assert f"public_key: {pub}\n" in done.files["gateway.yaml"]
    with pytest.raises(ScaffoldError):
        render_scaffold(GatewaySpec("cloud-2", "vpn.example:51821", public_key="short"),
                        Pin("o/t", REV))
