"""Git source: real bare remotes on disk, real fetches, real signatures."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from git_remote import GIT_ENV, ConfigRemote, git

from reconciler.gitops.source import Ancestry, GitSource, SourceError, classify, org_of


@pytest.fixture()
def remote(tmp_path: Path) -> ConfigRemote:
    return ConfigRemote(tmp_path / "r")


def make_source(remote: ConfigRemote, tmp_path: Path, **kw: object) -> GitSource:
    return GitSource(str(remote.bare), remote.branch, tmp_path / "state" / "mirror.git", **kw)  # type: ignore[arg-type]


def test_classify_is_pure_decision() -> None:
    assert classify(None, "b", False) is Ancestry.first
    assert classify("a", "a", False) is Ancestry.same
    assert classify("a", "b", True) is Ancestry.forward
    assert classify("a", "b", False) is Ancestry.rewind


def test_org_of_both_layouts() -> None:
    assert org_of("tenants/acme/hq.yaml") == "acme"
    assert org_of("acme/hq.yaml") == "acme"
    assert org_of("gateway.yaml") is None
    assert org_of("gateways/cloud-1.yaml") is None
    assert org_of("tenants/acme/sub/x.yaml") is None


def test_fetch_reads_tree_not_worktree(remote: ConfigRemote, tmp_path: Path) -> None:
    c1 = remote.commit({"cfg/gateway.yaml": "name: g\n", "cfg/acme/hq.yaml": "org: acme\n",
                        "cfg/README.md": "not yaml", "other/x.yaml": "outside\n"})
    src = make_source(remote, tmp_path, repo_path="cfg")
    assert src.fetch() == c1
    files = {f.path: f for f in src.files(c1)}
    assert set(files) == {"gateway.yaml", "acme/hq.yaml"}
    assert files["acme/hq.yaml"].data == b"org: acme\n"
    assert files["acme/hq.yaml"].blob_id == git(remote.work, "rev-parse", "HEAD:cfg/acme/hq.yaml")
    # The mirror is bare: there is no working copy that could change under a reader.
    assert not (tmp_path / "state" / "mirror.git" / "cfg").exists()
    assert git(tmp_path / "state" / "mirror.git", "rev-parse", "--is-bare-repository") == "true"
    # An older commit's tree stays readable after the branch moves on.
    c2 = remote.commit({"cfg/acme/hq.yaml": "org: acme\nname: hq\n"})
    assert src.fetch() == c2
    assert {f.path: f.data for f in src.files(c1)}["acme/hq.yaml"] == b"org: acme\n"
    only_acme = src.files(c2, orgs=frozenset({"acme"}))
    assert [f.path for f in only_acme] == ["acme/hq.yaml"]


def test_unchanged_blobs_are_not_read_again(remote: ConfigRemote, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    files = {f"o{i}/t.yaml": f"org: o{i}\n" for i in range(20)}
    c1 = remote.commit(files)
    src = make_source(remote, tmp_path)
    src.fetch()
    reads: list[bytes] = []
    real_stream = src.repo.odb.stream

    def counting_stream(binsha: bytes):  # type: ignore[no-untyped-def]
        reads.append(binsha)
        return real_stream(binsha)

    monkeypatch.setattr(src.repo.odb, "stream", counting_stream)
    src.files(c1)
    assert len(reads) == 20
    c2 = remote.commit({"o3/t.yaml": "org: o3\nname: t\n"})
    src.fetch()
    reads.clear()
    assert len(src.files(c2)) == 20
    assert len(reads) == 1  # only the changed file's blob


def test_rewind_is_detected_and_applied_commit_survives_gc(remote: ConfigRemote,
                                                           tmp_path: Path) -> None:
    a = remote.commit({"g/gateway.yaml": "a\n"})
    b = remote.commit({"g/gateway.yaml": "b\n"})
    src = make_source(remote, tmp_path)
    assert src.fetch() == b
    assert src.ancestry(None, b) is Ancestry.first
    src.pin("applied", b)
    c = remote.commit({"g/gateway.yaml": "c\n"})
    assert src.fetch() == c
    assert src.ancestry(b, c) is Ancestry.forward
    assert src.ancestry(c, c) is Ancestry.same
    # Force-push history back to a, plus a new commit that does not contain b.
    remote.rewind(a)
    d = remote.commit({"g/gateway.yaml": "d\n"})
    assert src.fetch() == d
    assert src.ancestry(b, d) is Ancestry.rewind
    git(src.mirror_dir, "reflog", "expire", "--expire=now", "--all")
    git(src.mirror_dir, "gc", "-q", "--prune=now")
    assert src.has_commit(b), "the pinned applied commit must survive a rewind and gc"
    assert src.pins() == {"applied": b}
    # A commit the mirror never had cannot be shown to descend: fail closed.
    assert src.ancestry("0" * 40, d) is Ancestry.rewind


def test_unreachable_remote_and_missing_branch(remote: ConfigRemote, tmp_path: Path) -> None:
    head = remote.commit({"gateway.yaml": "x\n"})
    src = make_source(remote, tmp_path)
    assert src.fetch() == head
    remote.bare.rename(remote.bare.with_name("gone.git"))
    with pytest.raises(SourceError, match="fetch"):
        src.fetch()
    assert src.head() == head, "the last fetched head stays known"
    remote.bare.with_name("gone.git").rename(remote.bare)
    other = GitSource(str(remote.bare), "no-such-branch", tmp_path / "m2.git")
    with pytest.raises(SourceError, match="no-such-branch"):
        other.fetch()


def test_remote_url_change_is_followed(remote: ConfigRemote, tmp_path: Path) -> None:
    head = remote.commit({"gateway.yaml": "x\n"})
    src = make_source(remote, tmp_path)
    src.fetch()
    src.close()
    moved = remote.bare.with_name("moved.git")
    remote.bare.rename(moved)
    src2 = GitSource(str(moved), remote.branch, src.mirror_dir)
    assert src2.fetch() == head


def test_ssh_signature_verification(remote: ConfigRemote, tmp_path: Path) -> None:
    allowed = remote.enable_ssh_signing()
    signed = remote.commit({"gateway.yaml": "signed\n"}, sign=True)
    src = make_source(remote, tmp_path, allowed_signers=allowed)
    src.fetch()
    assert src.verify(signed) is None
    unsigned = remote.commit({"gateway.yaml": "unsigned\n"})
    src.fetch()
    reason = src.verify(unsigned)
    assert reason is not None and "not signed" in reason
    # Signed, but by a key nobody trusted.
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    git(remote.work, "config", "user.signingkey", str(stranger))
    rogue = remote.commit({"gateway.yaml": "rogue\n"}, sign=True)
    src.fetch()
    reason = src.verify(rogue)
    assert reason is not None and "untrusted" in reason
    # Without a trust root nothing is trusted, not even the good signature.
    empty = tmp_path / "empty_signers"
    empty.write_text("")
    assert make_source(remote, tmp_path, allowed_signers=empty).verify(signed) is not None


@pytest.fixture()
def gnupg_home(tmp_path: Path) -> Iterator[Path]:
    """A throw-away keyring; the gpg-agent gpg starts for it is stopped afterwards."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    try:
        yield home
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False,
                       capture_output=True)


def test_openpgp_signature_verification(remote: ConfigRemote, tmp_path: Path,
                                        gnupg_home: Path) -> None:
    home = gnupg_home
    env = {"GNUPGHOME": str(home)}
    subprocess.run(["gpg", "--batch", "--quiet", "--passphrase", "", "--quick-gen-key",
                    "Ops <ops@example.net>", "ed25519", "sign", "never"],
                   env={**env, "PATH": "/usr/bin:/bin"}, check=True, capture_output=True)
    fpr = subprocess.run(["gpg", "--batch", "--with-colons", "--list-secret-keys"],
                         env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                         check=True).stdout
    key_id = next(line.split(":")[9] for line in fpr.splitlines() if line.startswith("fpr"))
    git(remote.work, "config", "user.signingkey", key_id)
    git(remote.work, "config", "gpg.program", "gpg")
    import os

    old = os.environ.get("GNUPGHOME")
    os.environ["GNUPGHOME"] = str(home)
    try:
        remote.signing_key = Path(key_id)
        signed = remote.commit({"gateway.yaml": "pgp\n"}, sign=True)
    finally:
        if old is None:
            os.environ.pop("GNUPGHOME")
        else:
            os.environ["GNUPGHOME"] = old
    src = make_source(remote, tmp_path, gnupg_home=home)
    src.fetch()
    assert src.verify(signed) is None
    unsigned = remote.commit({"gateway.yaml": "plain\n"})
    src.fetch()
    assert src.verify(unsigned) is not None
    # The same signature is not trusted by a keyring that lacks the key.
    other = tmp_path / "other-gnupg"
    other.mkdir(mode=0o700)
    assert make_source(remote, tmp_path, gnupg_home=other).verify(signed) is not None


def test_the_mirror_refuses_malformed_objects_and_ignores_global_git_config(
        remote: ConfigRemote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = remote.commit({"gateway.yaml": "name: g\n"})
    # A global config of root's that would rewrite the remote URL must change nothing.
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(f'[url "{tmp_path}/nowhere"]\n\tinsteadOf = {remote.bare}\n')
    monkeypatch.setenv("HOME", str(home))
    src = make_source(remote, tmp_path)
    assert src.fetch() == good
    mirror = tmp_path / "state" / "mirror.git"
    assert git(mirror, "config", "transfer.fsckObjects") == "true"
    # A tree entry named `..` is a path traversal: fsck refuses it, so the fetch fails and the
    # mirror keeps the last good commit.
    env = {**os.environ, **GIT_ENV, "GIT_CONFIG_GLOBAL": "/dev/null"}  # not the rewrite above

    def plumbing(*args: str, stdin: str = "") -> str:
        return subprocess.run(["git", *args], cwd=remote.work, env=env, input=stdin, text=True,
                              check=True, capture_output=True).stdout.strip()

    blob = plumbing("hash-object", "-w", "--stdin", stdin="x\n")
    tree = plumbing("mktree", stdin=f"100644 blob {blob}\t..\n")
    bad = plumbing("commit-tree", tree, "-p", good, "-m", "evil")
    plumbing("push", "-q", "-f", "origin", f"{bad}:refs/heads/{remote.branch}")
    with pytest.raises(SourceError):
        src.fetch()
    assert git(mirror, "rev-parse", f"refs/remotes/origin/{remote.branch}") == good
