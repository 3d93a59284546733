"""The load driven by what changed (issue 13): a git listing patched with `git diff-tree`
equals a full `ls-tree` listing, and a load that patches the last clean one equals a full
load, over random adds, edits, deletes and renames of files, broken files and fixes, a file
claiming another's key, and gateway changes (which load in full)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from git_remote import ConfigRemote

from reconciler.gitops.source import GitSource
from reconciler.lab import generate_repo
from reconciler.repo import state as state_module
from reconciler.repo.state import ParseCache, RepoState, SourceFile, load_files

GATEWAY = "lab-1"


def _pool(tmp: Path, n: int) -> tuple[dict[str, bytes], list[bytes]]:
    """A valid repo of n tenants (path -> bytes) and n more tunnel files that fit it."""
    gen = generate_repo(tmp / "gen", 2 * n, gateway=GATEWAY)
    files = {p.relative_to(gen.root).as_posix(): p.read_bytes()
             for p in sorted(gen.root.rglob("*.yaml"))}
    tunnels = sorted(p for p in files if p != "gateway.yaml")
    spare = [files.pop(p) for p in tunnels[n:]]
    return files, spare


def _mutate(rng: random.Random, files: dict[str, bytes], spare: list[bytes],
            step: int) -> None:
    tunnels = sorted(p for p in files if "/" in p and p.endswith(".yaml"))
    op = rng.choice(["edit", "edit", "delete", "rename", "add", "broken", "clash", "gateway",
                     "other", "misplaced", "many"])
    path = rng.choice(tunnels)
    if op == "edit":
        files[path] = files[path].replace(b"persistent_keepalive: 25",
                                          b"persistent_keepalive: 21") \
            if b"keepalive: 25" in files[path] else files[path] + b"# edited\n"
    elif op == "delete":
        del files[path]
    elif op == "rename":
        org = path.split("/")[0]
        files[f"{org}/moved{step}.yaml"] = files.pop(path).replace(
            b"\nname: ", b"\nname: moved" + str(step).encode() + b"\nold_name: ")
        text = files[f"{org}/moved{step}.yaml"]
        files[f"{org}/moved{step}.yaml"] = b"\n".join(
            ln for ln in text.split(b"\n") if not ln.startswith(b"old_name:"))
    elif op == "add" and spare:
        data = spare.pop()
        org = data.split(b"\n", 1)[0].split(b": ")[1].decode()
        name = data.split(b"\n", 2)[1].split(b": ")[1].decode()
        files[f"{org}/{name}.yaml"] = data
    elif op == "broken":
        files[path] = b"org: [unclosed\n"
    elif op == "clash":  # a second file with another tunnel's key and subnet
        other = rng.choice(tunnels)
        files[f"{other.split('/')[0]}/copy{step}.yaml"] = files[other].replace(
            b"\nname: ", b"\nname: copy" + str(step).encode())
    elif op == "gateway":
        files["gateway.yaml"] = files["gateway.yaml"] + f"# gateway edit {step}\n".encode()
    elif op == "other":
        files[f"docs{step}.txt"] = b"not yaml"
    elif op == "misplaced":
        files[f"a/b/c{step}.yaml"] = b"x: 1\n"
    elif op == "many":
        for p in rng.sample(tunnels, min(5, len(tunnels))):
            files[p] = files[p] + b"# many\n"
    if op in ("broken", "clash", "misplaced") and rng.random() < 0.7:
        return
    # Usually repair: drop whatever is broken, so most steps start from a clean repo again.
    for p in list(files):
        if files[p] == b"org: [unclosed\n" or "/copy" in p or p.startswith("a/"):
            del files[p]


def test_patched_load_equals_a_full_load(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    patched: list[bool] = []
    real = state_module._patched

    def counting(*args: Any) -> RepoState | None:
        out = real(*args)
        patched.append(out is not None)
        return out

    monkeypatch.setattr(state_module, "_patched", counting)
    rng = random.Random(1414)
    files, spare = _pool(tmp_path, 40)
    cache = ParseCache()
    objects: dict[str, SourceFile] = {}
    patched_steps = 0
    for step in range(150):
        # As a git listing hands them: the same object for an unchanged file.
        listing = []
        for path in sorted(files, key=lambda p: p.encode()):
            data = files[path]
            blob = hashlib.sha1(data).hexdigest()
            sf = objects.get(path)
            if sf is None or sf.blob_id != blob:
                sf = objects[path] = SourceFile(path, data, blob)
            listing.append(sf)
        was_clean = cache.last is not None
        got = load_files(listing, cache)
        want = load_files(listing, ParseCache())
        assert got == want, step
        patched_steps += was_clean and got.ok
        _mutate(rng, files, spare, step)
    assert patched_steps > 40
    assert sum(patched) > 40 and not all(patched)  # both ways were taken, many times


def test_diff_tree_listing_equals_ls_tree(tmp_path: Path) -> None:
    rng = random.Random(99)
    files, spare = _pool(tmp_path, 30)
    remote = ConfigRemote(tmp_path / "r")
    mirror = tmp_path / "mirror.git"
    sources = {path: GitSource(str(remote.bare), remote.branch, mirror, repo_path=path)
               for path in ("", "cfg")}  # each keeps its listings and patches them
    full: list[str] = []
    for src in sources.values():
        real = src._full_listing

        def counting(sha: str, real: Callable[[str], dict[str, SourceFile]] = real
                     ) -> dict[str, SourceFile]:
            full.append(sha)
            return real(sha)

        src._full_listing = counting  # type: ignore[method-assign]
    work = remote.work
    for step in range(40):
        for p in work.rglob("*"):
            if p.is_file() and ".git" not in p.parts:
                p.unlink()
        remote.write({f"cfg/{k}": v for k, v in files.items()})
        if step % 7 == 3:  # a symlink is a blob in both listings
            (work / "cfg" / "link.yaml").symlink_to("gateway.yaml")
        head = remote.commit(message=f"step {step}")
        for path, src in sources.items():
            src.fetch()
            fresh = GitSource(str(remote.bare), remote.branch, mirror, repo_path=path)
            want = [(f.path, f.data, f.blob_id) for f in fresh.files(head)]
            got = [(f.path, f.data, f.blob_id) for f in src.files(head)]
            assert got == want, (step, path)
            assert [f.data for f in src.files(head, orgs=frozenset({"gen00001"}))] == \
                [f.data for f in fresh.files(head, orgs=frozenset({"gen00001"}))]
        _mutate(rng, files, spare, step)
        if step % 5 == 0:  # a directory rename: every file of an org moves
            org = rng.choice(sorted({p.split("/")[0] for p in files if "/" in p}))
            for moved in [k for k in files if k.startswith(org + "/")]:
                files[moved.replace(org + "/", org + "-x/", 1)] = files.pop(moved)
    assert len(full) == 2, "only the first listing of each source reads the whole tree"
