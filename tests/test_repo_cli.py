"""`tunnelctl validate`, `new` and `schema` as ops and CI use them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from repo_kit import ROOT, copy_project, key

from reconciler.cli.repo import register


@pytest.fixture
def cli() -> click.Group:
    group = click.Group()
    register(group)
    return group


def run(cli: click.Group, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_the_installed_command_validates_the_shipped_examples() -> None:
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "tunnelctl"), "validate", "tenants/"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no problems" in out.stdout


def test_a_broken_copy_fails_with_file_line_col(cli: click.Group, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    project = copy_project(tmp_path)
    hq = project / "tenants" / "acme-voip" / "hq.yaml"
    hq.write_text(hq.read_text().replace("subnet: 10.20.0.4/30", "subnet: 10.20.0.5/30"))
    monkeypatch.chdir(project)
    result = run(cli, "validate", "tenants")
    assert result.exit_code == 1
    assert ("tenants/acme-voip/hq.yaml:6:9: subnet: '10.20.0.5/30' is not canonical; write it "
            "as '10.20.0.4/30'") in result.output
    assert "orgs that cannot be applied: acme-voip" in result.output


def test_a_path_inside_the_repo_reports_only_what_is_under_it(cli: click.Group, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    project = copy_project(tmp_path)
    clinic = project / "tenants" / "carrot-dental" / "clinic.yaml"
    clinic.write_text(clinic.read_text().replace("192.168.30.0/24", "192.168.10.0/24"))
    monkeypatch.chdir(project)
    both = run(cli, "validate", "--format", "json")  # '.' finds ./tenants
    assert {p["file"] for p in json.loads(both.output)} == {
        "tenants/acme-voip/hq.yaml", "tenants/carrot-dental/clinic.yaml"}
    one_file = run(cli, "validate", "tenants/carrot-dental/clinic.yaml", "--format", "json")
    problems = json.loads(one_file.output)
    assert one_file.exit_code == 1 and len(problems) == 1
    assert problems[0]["line"] == 8 and problems[0]["col"] == 5
    assert "tenants/acme-voip/hq.yaml:8" in problems[0]["message"]
    assert run(cli, "validate", "tenants/bluebird-telecom").exit_code == 0


def test_github_format_is_workflow_annotations(cli: click.Group, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    project = copy_project(tmp_path)
    (project / ".git").mkdir()  # annotations are relative to the git root
    hq = project / "tenants" / "acme-voip" / "hq.yaml"
    hq.write_text(hq.read_text().replace("name: hq", "name: 'hq, 100%\nsure'"))
    monkeypatch.chdir(project / "tenants")
    result = CliRunner().invoke(cli, ["validate", ".", "--format", "github"])
    lines = result.stdout.splitlines()
    assert result.exit_code == 1 and lines
    pattern = re.compile(r"^::error file=tenants/acme-voip/hq\.yaml,line=\d+,col=\d+,"
                         r"title=tunnelctl validate::[^\n]+$")
    assert all(pattern.match(line) for line in lines), lines
    assert "%25" in result.stdout  # '%' escaped so the message survives the runner
    assert "problem(s)" in result.stderr


def test_new_then_validate(cli: click.Group, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    project = copy_project(tmp_path)
    monkeypatch.chdir(project)
    made = run(cli, "new", "delta-dial", "office", "--pubkey", key("delta"), "--lan",
               "192.168.77.0/24", "--services", "sip", "--notes", "New customer: Delta")
    assert made.exit_code == 0, made.output
    assert "created tenants/delta-dial/office.yaml" in made.output
    assert "subnet            10.20.0.20/30" in made.output
    assert "customer address  10.20.0.22/30" in made.output
    text = (project / "tenants" / "delta-dial" / "office.yaml").read_text()
    # tenants/ is a config repo of its own: its schemas/ sit beside the org folders.
    assert text.startswith("# yaml-language-server: $schema=../schemas/tunnel.schema.json\n")
    assert "services: [sip]" in text and "notes: 'New customer: Delta'" in text
    assert run(cli, "validate", "tenants").exit_code == 0
    second = run(cli, "new", "delta-dial", "branch", "--pubkey", key("delta2"))
    assert "10.20.0.24/30" in second.output


def test_new_points_at_the_nearest_schemas_and_omits_a_dangling_modeline(
        cli: click.Group, tmp_path: Path) -> None:
    project = copy_project(tmp_path)
    made = run(cli, "new", "echo", "x", "--pubkey", key("echo"), "--repo",
               str(project / "tenants"))
    assert made.exit_code == 0, made.output
    header = (project / "tenants" / "echo" / "x.yaml").read_text().splitlines()[0]
    assert header == "# yaml-language-server: $schema=../schemas/tunnel.schema.json"
    assert (project / "tenants" / "echo" / ".." / "schemas" / "tunnel.schema.json").exists()
    # Without schemas anywhere in the work tree: no modeline to a missing file, and a hint.
    shutil.rmtree(project / "tenants" / "schemas")
    shutil.rmtree(project / "schemas")
    (project / ".git").mkdir()
    made = run(cli, "new", "echo", "y", "--pubkey", key("echo-y"), "--repo",
               str(project / "tenants"))
    assert made.exit_code == 0 and "run 'tunnelctl schema'" in made.output
    assert not (project / "tenants" / "echo" / "y.yaml").read_text().startswith("#")


@pytest.mark.parametrize("args,words", [
    (["acme-voip", "hq", "--pubkey", key("x")], "already exists"),
    (["zulu", "a", "--pubkey", "lLPX1IURNbXgkXRFHb5cSmCcgcvMle6WvHEPQ57qGn8="],
     "also used by tenants/acme-voip/hq.yaml:5"),
    (["zulu", "a;reboot", "--pubkey", key("x")], "not a valid name"),
    (["zulu", "a", "--pubkey", key("x", 31)], "decodes to 31 bytes"),
    (["zulu", "a", "--pubkey", key("x"), "--lan", "192.168.10.0/25"], "overlaps LAN"),
    (["zulu", "a", "--pubkey", key("x"), "--lan", "0.0.0.0/0"], "covers every address"),
    (["zulu", "a", "--pubkey", key("x"), "--services", "ftp"], "not in the catalog"),
    (["zulu", "a", "--pubkey", key("x"), "--gateway", "cloud-9"], "not in the repo"),
])
def test_new_refuses_what_validate_would_refuse(cli: click.Group, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                args: list[str], words: str) -> None:
    project = copy_project(tmp_path)
    monkeypatch.chdir(project)
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    result = CliRunner().invoke(cli, ["new", *args, "--repo", "tenants"])
    assert result.exit_code == 1
    assert words in result.stderr
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before


def test_schema_check(cli: click.Group, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert run(cli, "schema", "--check").exit_code == 0
    out = tmp_path / "schemas"
    assert run(cli, "schema", "--check", "--out", str(out)).exit_code == 1
    assert run(cli, "schema", "--out", str(out)).exit_code == 0
    assert run(cli, "schema", "--check", "--out", str(out)).exit_code == 0


def test_validate_outside_any_repo_says_what_to_do(cli: click.Group, tmp_path: Path) -> None:
    result = run(cli, "validate", str(tmp_path))
    assert result.exit_code != 0 and "no gateway.yaml" in result.output


def test_new_generate_key_stores_only_the_public_key(cli: click.Group, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from reconciler.engine import psk, wgkeys

    project = copy_project(tmp_path)
    monkeypatch.chdir(project)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    psk.create_host_secret(secrets / "psk.secret")
    listing = sorted(p.name for p in project.iterdir())
    made = run(cli, "new", "delta-dial", "phone", "--generate-key", "--secret-dir", str(secrets))
    assert made.exit_code == 0, made.output
    private = re.search(r"private key\s+(\S+)", made.output)
    assert private is not None and "█" in made.output  # the QR code, drawn once
    text = (project / "tenants" / "delta-dial" / "phone.yaml").read_text()
    assert private.group(1) not in text
    assert f"public_key: {wgkeys.public_key(private.group(1))}" in text
    assert sorted(p.name for p in project.iterdir()) == listing  # no key file dropped here
    both = CliRunner().invoke(cli, ["new", "x", "y", "--generate-key", "--pubkey", key("x")])
    neither = CliRunner().invoke(cli, ["new", "x", "y"])
    assert "exactly one of them" in both.output and "exactly one of them" in neither.output
    assert both.exit_code != 0 and neither.exit_code != 0


def _dual_stack(project: Path) -> None:
    gateway = project / "tenants" / "gateway.yaml"
    gateway.write_text(gateway.read_text() + "address6: fd42:4242:1::1/48\n"
                       "pool6: fd42:4242:1::/48\n")


def test_new_on_a_dual_stack_gateway_also_gets_the_first_free_ipv6_prefix(
        cli: click.Group, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = copy_project(tmp_path)
    _dual_stack(project)
    monkeypatch.chdir(project)
    made = run(cli, "new", "delta-dial", "office", "--pubkey", key("delta"),
               "--lan6", "fd00:5::/48")
    assert made.exit_code == 0, made.output
    assert "subnet6           fd42:4242:1:1::/64" in made.output
    assert "customer address6 fd42:4242:1:1::2/64" in made.output
    assert "cloud address6    fd42:4242:1::1" in made.output
    text = (project / "tenants" / "delta-dial" / "office.yaml").read_text()
    assert "subnet6: fd42:4242:1:1::/64\nlans6:\n  - fd00:5::/48\n" in text
    second = run(cli, "new", "delta-dial", "branch", "--pubkey", key("delta2"))
    assert "subnet6           fd42:4242:1:2::/64" in second.output
    pinned = run(cli, "new", "delta-dial", "lab", "--pubkey", key("delta3"),
                 "--subnet6", "fd42:4242:1:99::/64")
    assert pinned.exit_code == 0, pinned.output
    assert "customer address6 fd42:4242:1:99::2/64" in pinned.output
    assert run(cli, "validate", "tenants").exit_code == 0


@pytest.mark.parametrize("args,words", [
    (["--subnet6", "fd42:4242:1:1::/64"],
     ("subnet6 fd42:4242:1:1::/64 uses the same addresses as subnet6 fd42:4242:1:1::/64 of "
      "tenants/delta-dial/office.yaml:8")),  # line 1 is the modeline
    (["--subnet6", "fd42:4242:9::/64"], "is outside pool6 fd42:4242:1::/48"),
    (["--subnet6", "fd42:4242:1::/64"], "overlaps the gateway's own block"),
    (["--subnet6", "fd42:4242:1:700::/56"], "every tunnel gets a /64"),
    (["--lan6", "fd00:5:0:1::/64"], "overlaps LAN fd00:5::/48 of tenants/delta-dial/office.yaml"),
    (["--lan6", "2001:db8::/32"], "is not unique local IPv6 space"),
])
def test_new_refuses_a_taken_or_misplaced_ipv6_prefix(cli: click.Group, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      args: list[str], words: str) -> None:
    project = copy_project(tmp_path)
    _dual_stack(project)
    monkeypatch.chdir(project)
    assert run(cli, "new", "delta-dial", "office", "--pubkey", key("delta"), "--lan6",
               "fd00:5::/48").exit_code == 0
    result = CliRunner().invoke(cli, ["new", "zulu", "a", "--pubkey", key("x"), *args])
    assert result.exit_code == 1
    assert words in result.stderr, result.stderr
    assert not (project / "tenants" / "zulu").exists()


def test_new_on_an_ipv4_only_gateway_writes_no_ipv6_and_refuses_ipv6_options(
        cli: click.Group, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = copy_project(tmp_path)
    monkeypatch.chdir(project)
    made = run(cli, "new", "delta-dial", "office", "--pubkey", key("delta"))
    assert made.exit_code == 0 and "subnet6" not in made.output and "address6" not in made.output
    text = (project / "tenants" / "delta-dial" / "office.yaml").read_text()
    assert "subnet6" not in text and "lans6" not in text
    for option in (["--subnet6", "fd42:4242:1:1::/64"], ["--lan6", "fd00:5::/48"]):
        result = CliRunner().invoke(cli, ["new", "zulu", "a", "--pubkey", key("x"), *option])
        assert result.exit_code == 1
        assert "gateway cloud-1 has no IPv6 (no address6/pool6 in its file)" in result.stderr
