"""Blame follows change: in a cross-file conflict only the org whose files changed is held."""

from __future__ import annotations

from pathlib import Path

from git_remote import ConfigRemote

from reconciler.gitops.admission import Candidate, assign_blame, candidate_for
from reconciler.gitops.source import GitSource
from reconciler.lab import add_generated_tunnels, generate_repo
from reconciler.repo.crossfile import conflict_partner
from reconciler.repo.state import ParseCache, Problem, load_files

GATEWAY = "lab-1"


def _claim_lan(path: Path, lan: str) -> None:
    lines = [f"lans: [{lan}]" if ln.startswith("lans:") else ln
             for ln in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")


def _world(tmp_path: Path) -> tuple[ConfigRemote, GitSource, str, Path, Path]:
    gen = generate_repo(tmp_path / "gen", 4, gateway=GATEWAY)  # org gen00000: site2 has a LAN
    remote = ConfigRemote(tmp_path / "remote")
    first = remote.replace_tree(gen.root, "org A")
    src = GitSource(str(remote.bare), remote.branch, tmp_path / "mirror.git")
    src.fetch()
    (c,) = add_generated_tunnels(remote.work, 1, gateway=GATEWAY, org_prefix="cee", lan_every=1)
    _claim_lan(c.path, "172.16.0.0/24")  # org A's LAN (gen00000/site2)
    return remote, src, first, remote.work / "gen00000", c.path


def test_the_org_that_changed_is_held_and_the_other_keeps_applying(tmp_path: Path) -> None:
    remote, src, first, org_a, _ = _world(tmp_path)
    site0 = org_a / "site0.yaml"
    site0.write_text(site0.read_text().replace("keepalive: 25", "keepalive: 15"))
    head = remote.commit(None, "C claims A's LAN; A changes site0")
    src.fetch()
    cache = ParseCache()
    loaded = load_files(src.files(head), cache)
    assert loaded.broken_orgs == {"gen00000", "cee00000"}, "reported at both files"
    cand = candidate_for(src, head, loaded, first, {}, cache)
    assert isinstance(cand, Candidate), cand
    assert cand.held == {"cee00000": first}
    keepalive = {t.ident: t.persistent_keepalive for t in cand.state.tunnels}
    assert keepalive["gen00000/site0"] == 15, "A's unrelated change is applied"
    assert "cee00000/site0" not in keepalive
    text = cand.held_text()
    assert text.startswith("org cee00000 kept at")
    assert "cee00000/site0.yaml is new; conflicts with gen00000/site2.yaml (unchanged)" in text
    assert "not held: gen00000" in text
    src.close()


def test_both_sides_changed_both_are_held(tmp_path: Path) -> None:
    remote, src, first, org_a, _ = _world(tmp_path)
    site2 = org_a / "site2.yaml"
    site2.write_text(site2.read_text().replace("keepalive: 25", "keepalive: 15"))
    head = remote.commit(None, "C claims A's LAN while A edits that tunnel")
    src.fetch()
    cache = ParseCache()
    cand = candidate_for(src, head, load_files(src.files(head), cache), first, {}, cache)
    assert isinstance(cand, Candidate), cand
    assert cand.held == {"cee00000": first, "gen00000": first}
    keepalive = {t.ident: t.persistent_keepalive for t in cand.state.tunnels}
    assert keepalive["gen00000/site2"] == 25, "A kept at the applied commit"
    assert "gen00000/site2.yaml is changed" in cand.held_text()
    src.close()


def test_nothing_applied_yet_holds_both() -> None:
    msg = ("LAN 172.16.0.0/24 uses the same addresses as LAN 172.16.0.0/24 of a/x.yaml:6 "
           "(a/x); WireGuard routes ...")
    assert conflict_partner(msg) == "a/x.yaml"
    assert conflict_partner("public key K is also used by b/y.yaml:4 (b/y); every") == "b/y.yaml"
    assert conflict_partner("subnet 10.0.0.0/29 is a /29; every tunnel gets a /30") is None
    problems = [Problem("c/z.yaml", 6, 7, msg, "c"),
                Problem("a/x.yaml", 6, 7, msg.replace("a/x", "c/z"), "a")]
    spared, blame = assign_blame(problems, lambda _path: "new")
    assert spared == frozenset() and set(blame) == {"a", "c"}
    spared, _ = assign_blame(problems, lambda p: "unchanged" if p.startswith("a/") else "new")
    assert spared == {"a"}
    # A single-file problem of its own always holds an org.
    spared, _ = assign_blame([*problems, Problem("a/x.yaml", 2, 1, "bad key", "a")],
                             lambda p: "unchanged" if p.startswith("a/") else "new")
    assert spared == frozenset()


def test_verify_all_refuses_an_unsigned_commit_below_a_signed_head(tmp_path: Path) -> None:
    from reconciler.gitops.admission import Refusal
    from reconciler.service.controller import Controller
    from reconciler.service.settings import Settings
    from reconciler.service.state import Revision

    gen = generate_repo(tmp_path / "gen", 2, gateway=GATEWAY)
    remote = ConfigRemote(tmp_path / "remote")
    remote.replace_tree(gen.root, "base")
    allowed = remote.enable_ssh_signing()
    base = remote.commit(None, "signed base", sign=True)
    add_generated_tunnels(remote.work, 1, gateway=GATEWAY)
    unsigned = remote.commit(None, "unsigned change")
    head = remote.commit(None, "signed on top", sign=True)

    def evaluate(verify: str) -> Candidate | Refusal:
        settings = Settings(repo_url=str(remote.bare), state_dir=tmp_path / verify,
                            allowed_signers=allowed, verify=verify, gateway=GATEWAY)
        ctl = Controller(settings)
        ctl.source.fetch()
        ctl.state.applied = Revision(commit=base, at=0.0)
        try:
            return ctl._evaluate(head)
        finally:
            ctl.source.close()

    assert Settings().verify == "head"
    assert isinstance(evaluate("head"), Candidate)
    refused = evaluate("all")
    assert isinstance(refused, Refusal) and refused.kind == "signature"
    assert unsigned[:12] in refused.reason and "not signed" in refused.reason
