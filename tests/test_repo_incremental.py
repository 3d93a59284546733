"""The incremental cross-file check (crossfile.CleanIndex) gives exactly what a full load does.

A service loads every new commit through one ParseCache; after a clean load only the changed
files are checked against an index of the rest. Random edits (overlapping subnets and LANs,
reused keys and names, renames, removals, fixes) are loaded both ways, warm and from a cold
cache, and must report the same problems and the same tunnels. The dual-stack run adds IPv6
prefixes and LANs (subnet6, lans6) and edits that clash them.
"""

from __future__ import annotations

import random
import re
from datetime import date, timedelta
from pathlib import Path

import pytest

from reconciler.lab import generate_repo
from reconciler.repo.state import ParseCache, RepoState, SourceFile, load_files, scan_dir

_ML = re.MULTILINE


def _same(a: RepoState, b: RepoState) -> None:
    assert a.problems == b.problems
    assert a.tunnels == b.tunnels and a.broken_orgs == b.broken_orgs
    assert a.all_tunnels == b.all_tunnels and dict(a.paths) == dict(b.paths)


def _edit(rng: random.Random, files: dict[str, bytes], base: dict[str, bytes],
          kinds: int = 8) -> str:
    paths = sorted(p for p in files if p != "gateway.yaml")
    path = rng.choice(paths)
    other = files[rng.choice(paths)].decode()
    text = files[path].decode()

    def field(name: str, src: str) -> str:
        m = re.search(rf"^{name}: (.*)$", src, _ML)
        return m.group(1) if m else ""

    kind = rng.randrange(kinds)
    if kind == 0:  # take another tunnel's subnet
        text = re.sub(r"^subnet: .*$", f"subnet: {field('subnet', other)}", text, flags=_ML)
    elif kind == 1:  # take another tunnel's LANs (or add one that overlaps nothing)
        lans = field("lans", other) if rng.random() < 0.7 else "[10.99.0.0/24]"
        text = re.sub(r"^lans: .*$", f"lans: {lans}", text, flags=_ML)
    elif kind == 2:  # reuse another tunnel's key
        text = re.sub(r"^public_key: .*$", f"public_key: {field('public_key', other)}", text,
                      flags=_ML)
    elif kind == 3:  # remove the file
        del files[path]
        return f"remove {path}"
    elif kind == 4:  # restore it as generated (fixes whatever was done to it)
        if path in base:
            text = base[path].decode()
    elif kind == 5:  # copy another file under a new name (same key, same subnet, wrong name)
        files[path.replace(".yaml", "-copy.yaml")] = other.encode()
        return f"copy to {path}"
    elif kind == 6:  # revoke or disable
        status = rng.choice(["disabled", "revoked\nrevoked_at: 2020-01-01"])
        text = re.sub(r"^status: .*$", f"status: {status}", text, flags=_ML)
    elif kind == 8:  # take another tunnel's IPv6 prefix (or drop ours: IPv4 only)
        subnet6 = field("subnet6", other)
        text = re.sub(r"^subnet6: .*\n", f"subnet6: {subnet6}\n" if subnet6 else "", text,
                      flags=_ML)
    elif kind == 9:  # take another tunnel's IPv6 LANs, or one that overlaps a few
        lans6 = field("lans6", other) if rng.random() < 0.7 else "[fd00:7::/32]"
        text = re.sub(r"^lans6: .*$", f"lans6: {lans6}", text, flags=_ML)
    elif kind == 10:  # a revoked tunnel's IPv6 prefix is held; its LANs are not
        day = date.today() - timedelta(days=5)
        text = re.sub(r"^status: .*$", f"status: revoked\nrevoked_at: {day}", text, flags=_ML)
    else:  # restore everything
        files.clear()
        files.update(base)
        return "restore all"
    files[path] = text.encode()
    return f"edit {kind} {path}"


V6_GATEWAY = b"address6: fd42:4242:1::1/48\npool6: fd42:4242:1::/48\n"


def _dual_stack(files: dict[str, bytes]) -> dict[str, bytes]:
    """The generated repo with IPv6: every tunnel but each fifth gets a /64 (from its /30's
    index), every third an IPv6 LAN, and every file a lans6 key for the edits to rewrite."""
    out = {"gateway.yaml": files["gateway.yaml"] + V6_GATEWAY}
    for n, path in enumerate(sorted(p for p in files if p != "gateway.yaml"), 1):
        lines = files[path].decode().splitlines(keepends=True)
        at = next(i for i, line in enumerate(lines) if line.startswith("lans:")) + 1
        lans6 = f"[fd00:{n:x}::/48]" if n % 3 == 0 else "[]"
        extra = ("" if n % 5 == 0 else f"subnet6: fd42:4242:1:{n:x}::/64\n") + f"lans6: {lans6}\n"
        out[path] = "".join([*lines[:at], extra, *lines[at:]]).encode()
    return out


@pytest.mark.parametrize("dual", [False, True], ids=["ipv4", "dual-stack"])
def test_incremental_cross_file_check_equals_a_full_load(tmp_path: Path, dual: bool) -> None:
    gen = generate_repo(tmp_path / "repo", 60, gateway="gw-inc")
    sources, refused = scan_dir(gen.root)
    assert not refused
    base = {sf.path: sf.data for sf in sources}
    if dual:
        base = _dual_stack(base)
    files = dict(base)
    rng = random.Random(13)
    warm = ParseCache()
    used_index = v6_clashes = 0
    for step in range(250 if dual else 150):
        what = _edit(rng, files, base, 11 if dual else 8) if step else "first"
        srcs = [SourceFile(p, d) for p, d in sorted(files.items())]
        indexed = warm.clean_index is not None
        got = load_files(srcs, warm)
        used_index += indexed and got.ok
        want = load_files(srcs, ParseCache())
        v6_clashes += any(m in p.message for p in want.problems for m in ("subnet6 ", "LAN fd"))
        try:
            _same(got, want)
        except AssertionError:
            raise AssertionError(f"step {step} ({what}) differs from a full load") from None
    assert used_index > 10  # the incremental path really ran, on clean repos
    assert v6_clashes > 10 if dual else v6_clashes == 0  # IPv6 claims really clashed
