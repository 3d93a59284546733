"""PR plans: the desired-state diff of two real commits, read from git objects only.

A fixed two-commit config repo is built in tmp with deterministic commits (fixed author, dates
and hard-coded public keys), so the rendered plans are pinned by golden files in tests/golden/.
Regenerate them after an intended change with: UPDATE_GOLDEN=1 pytest tests/test_prplan.py
"""

from __future__ import annotations

import json
import os
import re
from datetime import date
from pathlib import Path

import git
import pytest
from repo_kit import GATEWAY_YAML, key, tunnel_yaml
from repo_kit import load as repo_load

from reconciler.cli.engine import run_commit_plan
from reconciler.engine.psk import derive_psk
from reconciler.gitops import prplan
from reconciler.gitops.prplan_render import render_json, render_markdown, render_text
from reconciler.repo.state import RepoState

GOLDEN = Path(__file__).resolve().parent / "golden"
TODAY = date(2024, 6, 1)
K = [  # hard-coded test public keys (no private keys exist in this test)
    "XTe2NwcvLCjPg8ThHZCvazUko15F5KmBbZ6HyVB6wnw=",
    "e/GAk45DpjNeIgln90nHO6d9aFh3yS/wdDU2FAKlYBs=",
    "kuQgw6ZfH8dlNOd5UrPu+6Y9Ww79adBz3V7LlT53cHQ=",
    "DHV3X6VbklbChqYFKLXwBA6fV285+r7PV1gnmZPj+zI=",
    "djmJCJnbeIvcgiavB8kdctHs1wTJHgSlkhDOFg23UX4=",
    "pezZKkVBD/wQ4jwWsiuMIPS8+zVACPXSpQvFCYer2iM=",
    "TzAsqTyGSRjcaHl1TF/nJDJoYoKJ7smE1uZtRe4yEQg=",
    "O6rKWJ3Kh73UqnEtKz0u803BDzCfz6gW+qadR58vORk=",
    "viswGpzkQly67F73F9XCQ7W/zR76BHYK7xa31ug8ZiM=",
]

GATEWAY = """\
name: cloud-1
interface: wg1
listen_port: 51821
address: 10.20.0.1/16
pool: 10.20.0.0/16
reserved: [10.10.10.0/24]
infra_interfaces: [wg0]
endpoint: 203.0.113.10:51821
public_key: {key}
mtu: {mtu}
services:
  sip: {{proto: udp, ports: "5060,5080"}}
  rtp: {{proto: udp, ports: "10000-20000"}}
default_services: [sip, rtp]
"""


def tunnel(org: str, name: str, key: str, subnet: str, *, lans: str = "[]", extra: str = "") -> str:
    return (f"org: {org}\nname: {name}\ngateway: cloud-1\npublic_key: {key}\nsubnet: {subnet}\n"
            f"lans: {lans}\n{extra}")


BASE = {
    "gateway.yaml": GATEWAY.format(key=K[0], mtu=1420),
    "acme-voip/hq.yaml": tunnel("acme-voip", "hq", K[1], "10.20.0.4/30", lans="[192.168.10.0/24]"),
    "acme-voip/branch.yaml": tunnel("acme-voip", "branch", K[2], "10.20.0.8/30"),
    "bluebird-telecom/main.yaml": tunnel("bluebird-telecom", "main", K[3], "10.20.0.12/30",
                                         extra="services: [sip]\n"),
    "carrot-dental/clinic.yaml": tunnel("carrot-dental", "clinic", K[4], "10.20.0.16/30",
                                        lans="[192.168.30.0/24]"),
    "dodo-dental/old.yaml": tunnel("dodo-dental", "old", K[5], "10.20.0.20/30"),
    "echo-org/a.yaml": tunnel("echo-org", "a", K[6], "10.20.0.24/30"),
}
HEAD = {
    **BASE,
    "gateway.yaml": GATEWAY.format(key=K[0], mtu=1412),
    "acme-voip/hq.yaml": tunnel("acme-voip", "hq", K[1], "10.20.0.4/30",
                                lans="[192.168.11.0/24]", extra="services: [sip]\n"),
    "acme-voip/branch.yaml": tunnel("acme-voip", "branch", K[2], "10.20.0.8/30",
                                    extra="psk_rotation: 1\npersistent_keepalive: 15\n"),
    "bluebird-telecom/main.yaml": tunnel("bluebird-telecom", "main", K[7], "10.20.0.12/30",
                                         extra="services: [sip]\n"),
    "carrot-dental/new.yaml": tunnel("carrot-dental", "new", K[8], "10.20.0.28/30",
                                     extra="notes: Reception | front desk\n"),
    "echo-org/a.yaml": tunnel("echo-org", "a", K[6], "10.20.0.24/30",
                              extra="status: revoked\nrevoked_at: 2024-05-20\n"),
}
del HEAD["dodo-dental/old.yaml"]


def _commit(repo: git.Repo, files: dict[str, str], message: str, when: str) -> str:
    root = Path(repo.working_tree_dir or "")
    tenants = root / "tenants"
    for old in sorted(tenants.rglob("*.yaml")) if tenants.exists() else []:
        rel = old.relative_to(tenants).as_posix()
        if rel not in files:
            repo.index.remove([str(old)], working_tree=True)
    for rel, text in files.items():
        path = tenants / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        repo.index.add([str(path)])
    actor = git.Actor("Test Ops", "ops@example.test")
    commit = repo.index.commit(message, author=actor, committer=actor, author_date=when,
                               commit_date=when)
    return commit.hexsha


@pytest.fixture
def config_repo(tmp_path: Path) -> tuple[Path, str, str]:
    repo = git.Repo.init(tmp_path / "config", initial_branch="main")
    base = _commit(repo, BASE, "base", "2024-06-01T10:00:00 +0000")
    head = _commit(repo, HEAD, "head", "2024-06-01T11:00:00 +0000")
    return tmp_path / "config" / "tenants", base, head


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from the golden file"


def test_commits_are_deterministic(config_repo: tuple[Path, str, str]) -> None:
    # The golden files show short commit ids, so the fixture commits must be reproducible.
    _, base, head = config_repo
    _golden("prplan.commits", f"{base[:10]} {head[:10]}\n")


def test_diff_lists_every_change_per_org(config_repo: tuple[Path, str, str]) -> None:
    path, _, _ = config_repo
    diff = prplan.diff_commits(path, "HEAD~1", "HEAD", today=TODAY)
    assert diff.ok
    actions = {c.ident: c.action for c in diff.tunnel_changes}
    assert actions == {"acme-voip/hq": "change", "acme-voip/branch": "change",
                       "bluebird-telecom/main": "change", "carrot-dental/new": "add",
                       "dodo-dental/old": "remove", "echo-org/a": "change"}
    fields = {c.ident: {f.field for f in c.fields} for c in diff.tunnel_changes}
    assert fields["acme-voip/hq"] == {"lans", "services"}
    assert fields["acme-voip/branch"] == {"psk_rotation", "persistent_keepalive"}
    assert fields["bluebird-telecom/main"] == {"public_key"}
    assert fields["echo-org/a"] == {"status", "revoked_at"}
    assert diff.orgs == ("acme-voip", "bluebird-telecom", "carrot-dental", "dodo-dental",
                         "echo-org")
    assert [(g.name, [f.field for f in g.fields]) for g in diff.gateway_changes] == \
        [("cloud-1", ["mtu"])]
    kinds = {(w.subject, w.kind) for w in diff.warnings}
    assert kinds == {
        ("repository", "many-removals"), ("dodo-dental/old", "remove"),
        ("echo-org/a", "revoke"), ("acme-voip/hq", "lan-change"),
        ("acme-voip/hq", "service-removal"), ("acme-voip/branch", "psk-rotation"),
        ("bluebird-telecom/main", "key-change"), ("gateway cloud-1", "gateway-change"),
    }
    new = next(c for c in diff.tunnel_changes if c.ident == "carrot-dental/new").view
    assert (new.subnet, new.address, new.services) == ("10.20.0.28/30", "10.20.0.30",
                                                       ("rtp", "sip"))


def test_renderers_match_golden_files(config_repo: tuple[Path, str, str]) -> None:
    path, _, _ = config_repo
    diff = prplan.diff_commits(path, "HEAD~1", "HEAD", today=TODAY)
    _golden("prplan.txt", render_text(diff))
    _golden("prplan.json", render_json(diff))
    _golden("prplan.md", render_markdown(diff))
    json.loads(render_json(diff))


def test_no_preshared_key_ever_appears(config_repo: tuple[Path, str, str]) -> None:
    path, _, _ = config_repo
    diff = prplan.diff_commits(path, "HEAD~1", "HEAD", today=TODAY)
    secret = b"\x01" * 32
    psks = [derive_psk(secret, "acme-voip", "branch", r) for r in (0, 1)]
    for text in (render_text(diff), render_json(diff), render_markdown(diff)):
        assert "psk_rotation" in text
        assert not any(p in text for p in psks)
        assert "PresharedKey" not in text and "preshared_key=" not in text


def test_run_commit_plan_exit_codes(config_repo: tuple[Path, str, str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path, base, head = config_repo
    assert run_commit_plan(path, base, head, "markdown") == 2
    out = capsys.readouterr().out
    assert out.startswith("### tunnelctl plan: 1 to add, 4 to change, 1 to remove")
    assert run_commit_plan(path, head, head, "text") == 0
    assert "No changes" in capsys.readouterr().out
    assert run_commit_plan(path, base, "no-such-ref", "text") == 1
    assert "cannot resolve 'no-such-ref'" in capsys.readouterr().err


def test_invalid_head_exits_1_and_lists_problems(config_repo: tuple[Path, str, str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path, base, _ = config_repo
    repo = git.Repo(path.parent)
    # carrot-dental/new takes acme-voip/hq's subnet: a cross-file error at head.
    broken = {**HEAD, "carrot-dental/new.yaml": tunnel("carrot-dental", "new", K[8],
                                                       "10.20.0.4/30")}
    _commit(repo, broken, "overlap", "2024-06-01T12:00:00 +0000")
    assert run_commit_plan(path, base, "HEAD", "text") == 1
    out = capsys.readouterr().out
    assert "Validation problems at head" in out and "carrot-dental/new.yaml" in out
    assert run_commit_plan(path, base, "HEAD", "markdown") == 1
    assert "[!CAUTION]" in capsys.readouterr().out


def test_disable_and_small_removal_thresholds() -> None:
    # one removal out of many is not "many"; eleven are, whatever the share
    changes = [prplan.TunnelChange("remove", _view(f"o{i}", "active"), None) for i in range(11)]
    few = prplan.risk_warnings(changes[:1], [], 100, _empty(), _empty())
    assert "many-removals" not in {w.kind for w in few}
    many = prplan.risk_warnings(changes, [], 1000, _empty(), _empty())
    assert many[0].kind == "many-removals" and "11 tunnel(s)" in many[0].message
    disable = prplan.TunnelChange("change", _view("x", "active"), _view("x", "disabled"),
                                  (prplan.FieldChange("status", "active", "disabled"),))
    assert [w.kind for w in prplan.risk_warnings([disable], [], 10, _empty(), _empty())] == \
        ["disable"]


def test_plan_without_git_is_a_clear_error(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert run_commit_plan(tmp_path, "HEAD~1", "HEAD", "text") == 1
    assert "not inside a git repository" in capsys.readouterr().err


def _view(org: str, status: str) -> prplan.TunnelView:
    return prplan.TunnelView(org, "t", "cloud-1", "10.20.0.4/30", "10.20.0.6", (), ("sip",),
                             status, K[1], 25, 0, "", "")


def _empty() -> RepoState:
    return RepoState({}, ())


def _bulk(orgs: int, per_org: int, notes: str) -> dict[str, str]:
    files: dict[str, str] = {}
    block = 1
    for o in range(orgs):
        for t in range(per_org):
            files[f"org{o:04d}/t{t}.yaml"] = tunnel_yaml(
                f"org{o:04d}", f"t{t}", f"10.20.{block >> 6}.{(block & 63) * 4}/30",
                pubkey=key((o, t)), extra=f"notes: '{notes}'\n")
            block += 1
    return files


def test_a_huge_plan_stays_under_githubs_comment_limit() -> None:
    base = repo_load({})
    head = repo_load(_bulk(250, 4, "x" * 120))  # 1,000 added tunnels, long notes
    assert head.problems == ()
    diff = prplan.diff_states(base, head, prplan.Ref("main", "a" * 40), prplan.Ref("pr", "b" * 40))
    text = render_markdown(diff)
    assert len(text) < 65_536
    assert "| **total** | **1000** | **0** | **0** |" in text  # the summary is always complete
    assert "left out to stay under GitHub's comment limit" in text
    assert text.count("<details>") == text.count("</details>") > 0


def test_notes_cannot_add_markup_mentions_or_break_the_table() -> None:
    hostile = "</details><img src=x> @octocat [x](javascript:y) | `code` ~~s~~"
    diff = prplan.diff_states(repo_load({}), repo_load(_bulk(1, 1, hostile)),
                              prplan.Ref("main", "a" * 40), prplan.Ref("pr", "b" * 40))
    row = next(ln for ln in render_markdown(diff).splitlines() if "`t0`" in ln)
    cell = row.split("notes: ", 1)[1]
    unescaped = [m.group() for m in re.finditer(r"(?<!\\)[<>\[\]`~|]", cell)]
    assert unescaped == ["|"], cell  # only the cell's own closing pipe
    assert "@octocat" not in cell and "&#64;octocat" in cell


def test_an_invalid_head_is_never_shown_as_removals() -> None:
    base = repo_load(_bulk(2, 2, "ok"))
    broken = _bulk(2, 2, "ok")
    broken["org0000/t0.yaml"] = broken["org0000/t0.yaml"].replace("subnet:", "subnett:")
    diff = prplan.diff_states(base, repo_load(broken), prplan.Ref("main", "a" * 40),
                              prplan.Ref("pr", "b" * 40))
    text = render_markdown(diff)
    assert "invalid, not applied" in text and "to remove" not in text


def test_turning_on_amneziawg_warns_that_every_customer_must_reconfigure() -> None:
    from test_amneziawg import block

    base = repo_load(_bulk(1, 2, "ok"))
    head = repo_load(_bulk(1, 2, "ok"), gateway=GATEWAY_YAML + block())
    assert head.problems == ()
    diff = prplan.diff_states(base, head, prplan.Ref("main", "a" * 40), prplan.Ref("pr", "b" * 40))
    warning = next(w for w in diff.warnings if "amneziawg" in w.message)
    assert "must be reconfigured" in warning.message
    assert "Jc=" in render_markdown(diff)


# ---- IPv6 (subnet6, lans6, a gateway's pool6) ---------------------------------------------------

V6_GATEWAY = GATEWAY_YAML + "address6: fd42:4242:1::1/48\npool6: fd42:4242:1::/48\n"


def tunnel6(org: str, name: str, subnet: str, subnet6: str | None = None,
            lans6: tuple[str, ...] = (), extra: str = "") -> str:
    v6 = f"subnet6: {subnet6}\n" if subnet6 else ""
    v6 += f"lans6: [{', '.join(lans6)}]\n" if lans6 else ""
    return tunnel_yaml(org, name, subnet, pubkey=key((org, name, 6)), extra=v6 + extra)


BASE6 = {
    "acme/hq.yaml": tunnel6("acme", "hq", "10.20.0.4/30", "fd42:4242:1:1::/64", ("fd00:10::/48",)),
    "acme/branch.yaml": tunnel6("acme", "branch", "10.20.0.8/30", "fd42:4242:1:2::/64"),
    "bluebird/main.yaml": tunnel6("bluebird", "main", "10.20.0.12/30"),
    "carrot/old.yaml": tunnel6("carrot", "old", "10.20.0.16/30", "fd42:4242:1:4::/64"),
    "dodo/lab.yaml": tunnel6("dodo", "lab", "10.20.0.20/30", "fd42:4242:1:5::/64",
                             ("fd00:20::/48",)),
}
HEAD6 = {
    **BASE6,
    "acme/hq.yaml": tunnel6("acme", "hq", "10.20.0.4/30", "fd42:4242:1:1::/64",
                            ("fd00:10::/48", "fd00:11::/48")),
    "acme/branch.yaml": tunnel6("acme", "branch", "10.20.0.8/30", "fd42:4242:1:7::/64"),
    "bluebird/main.yaml": tunnel6("bluebird", "main", "10.20.0.12/30", "fd42:4242:1:3::/64"),
    "carrot/new.yaml": tunnel6("carrot", "new", "10.20.0.24/30", "fd42:4242:1:8::/64",
                               ("fd00:30::/48",), extra="notes: IPv6 clinic\n"),
    "dodo/lab.yaml": tunnel6("dodo", "lab", "10.20.0.20/30"),
}
del HEAD6["carrot/old.yaml"]


def _diff6() -> prplan.RepoDiff:
    base = repo_load(BASE6, gateway=V6_GATEWAY)
    head = repo_load(HEAD6, gateway=V6_GATEWAY + "routed_ranges6: [fd42:4242:2::/64]\n")
    assert base.problems == () and head.problems == ()
    return prplan.diff_states(base, head, prplan.Ref("main", "a" * 40),
                              prplan.Ref("ipv6", "b" * 40))


def test_a_dual_stack_change_matches_golden_files() -> None:
    diff = _diff6()
    _golden("prplan_ipv6.txt", render_text(diff))
    _golden("prplan_ipv6.json", render_json(diff))
    _golden("prplan_ipv6.md", render_markdown(diff))


def test_subnet6_and_lans6_changes_warn_like_subnet_and_lans() -> None:
    diff = _diff6()
    fields = {c.ident: {f.field: (f.old, f.new) for f in c.fields}
              for c in diff.tunnel_changes if c.action == "change"}
    assert fields == {
        "acme/hq": {"lans6": ("fd00:10::/48", "fd00:10::/48, fd00:11::/48")},
        "acme/branch": {"subnet6": ("fd42:4242:1:2::/64", "fd42:4242:1:7::/64")},
        "bluebird/main": {"subnet6": ("-", "fd42:4242:1:3::/64")},
        "dodo/lab": {"subnet6": ("fd42:4242:1:5::/64", "-"), "lans6": ("fd00:20::/48", "-")},
    }
    warnings = {(w.subject, w.kind): w.message for w in diff.warnings}
    assert "fd00:11::/48 will be routed to this tunnel" in warnings["acme/hq", "lan-change"]
    assert "the customer must change its IPv6 tunnel address to fd42:4242:1:7::2" in \
        warnings["acme/branch", "subnet6-change"]
    assert "needs the IPv6 tunnel address fd42:4242:1:3::2" in \
        warnings["bluebird/main", "subnet6-change"]
    assert "fd00:20::/48 will no longer be routed" in warnings["dodo/lab", "lan-change"]
    assert "IPv6 traffic stops" in warnings["dodo/lab", "subnet6-change"]
    # routed_ranges6 is shown, but reaching one more cloud range is no customer-facing risk
    assert [f.field for f in diff.gateway_changes[0].fields] == ["routed_ranges6"]
    assert not any(w.subject.startswith("gateway") for w in diff.warnings)


def test_a_gateway_gaining_losing_or_moving_ipv6_warns() -> None:
    v4 = repo_load({"acme/hq.yaml": tunnel6("acme", "hq", "10.20.0.4/30")})
    v6 = repo_load({"acme/hq.yaml": tunnel6("acme", "hq", "10.20.0.4/30", "fd42:4242:1:1::/64")},
                   gateway=V6_GATEWAY)
    moved = repo_load({"acme/hq.yaml": tunnel6("acme", "hq", "10.20.0.4/30",
                                               "fd42:4242:1:1::/64")},
                      gateway=V6_GATEWAY.replace("address6: fd42:4242:1::1/48",
                                                 "address6: fd42:4242:1::fe/48"))
    refs = prplan.Ref("main", "a" * 40), prplan.Ref("pr", "b" * 40)

    def gateway_warning(base: RepoState, head: RepoState) -> str:
        found = [w for w in prplan.diff_states(base, head, *refs).warnings
                 if w.subject == "gateway cloud-1"]
        assert [w.kind for w in found] == ["gateway-change"]
        return found[0].message

    assert "gives gateway cloud-1 IPv6 (pool6 fd42:4242:1::/48)" in gateway_warning(v4, v6)
    assert "every IPv6 packet from its tenants is dropped" in gateway_warning(v6, v4)
    assert ("address6 fd42:4242:1::1/48 -> fd42:4242:1::fe/48): all 1 customer router(s) "
            "using IPv6") in gateway_warning(v6, moved)
