"""Load stage: config repository files -> RepoState (validated desired state + problems).

    load_files(files, cache=None, today=None) -> RepoState   # files from a git tree or a disk
    load_repo(path, cache=None, today=None) -> RepoState     # a folder on disk
    RepoState.gateways / .tunnels / .problems / .broken_orgs / .ok / .for_gateway(name)
    Problem(file, line, col, message, org)

Repo layout: `gateway.yaml` and/or `gateways/*.yaml` at the root; tunnel files either in
`tenants/<org>/<name>.yaml` (when the root has a tenants/ folder) or in `<org>/<name>.yaml`
(repo.layout, which also reads a folder: scan_dir).

Loading is incremental: the single-file stage (parse + schema, the expensive part) is cached by
content in a ParseCache, so a cycle after a one-file commit parses one file. After a load
without problems, the next load patches it with only the files that differ (the cross-file
rules checked for those against an index of the rest; repo.incremental); anything unusual
loads in full. The result types are in repo.repostate, the cache in repo.parsecache.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import date
from pathlib import Path

from yaml.nodes import Node

from reconciler.repo.crossfile import Finding, GatewayFile, TunnelFile, check_gateways
from reconciler.repo.fileload import MAX_ISSUES_PER_FILE, FileCheck
from reconciler.repo.gcpause import gc_paused
from reconciler.repo.incremental import patched as _patched
from reconciler.repo.incremental import tunnel_findings
from reconciler.repo.layout import (
    Placed,
    SourceFile,
    content_key,
    list_dir,
    place,
    read_capped,
    scan_dir,
)
from reconciler.repo.model import Gateway, Tunnel
from reconciler.repo.parallel import read_and_check
from reconciler.repo.parsecache import LastLoad, ParseCache
from reconciler.repo.repostate import GatewayChoiceError, Problem, RepoState
from reconciler.repo.yamlio import Loc

# The load stage's names, importable from here as before the split into modules.
# `_load` calls `_patched` through this module: tests/test_load_patched.py counts its calls.
__all__ = ["GatewayChoiceError", "ParseCache", "Problem", "RepoState", "SourceFile", "_patched",
           "content_key", "load_files", "load_repo", "scan_dir"]


def load_files(files: Iterable[SourceFile], cache: ParseCache | None = None,
               today: date | None = None, *, jobs: int = 1) -> RepoState:
    """Validate a whole repo given as files (from a git tree or a folder). `today` decides
    which revoked tunnels still hold their subnet (default: the current date). `jobs > 1`
    lets a cold load of a big repo fork a helper process (only from single-threaded code)."""
    return _load(files, cache, today, {}, jobs)


def _load(files: Iterable[SourceFile], cache: ParseCache | None, today: date | None,
          refused: Mapping[str, str], jobs: int = 1,
          checked: Mapping[str, FileCheck] | None = None) -> RepoState:
    """`checked`: single-file results by path made beforehand (load_repo's parallel read)."""
    today = today or date.today()
    cache = cache if cache is not None else ParseCache()
    sources = list(files)
    tenants_dir = any(f.path.startswith("tenants/") for f in sources)
    problems: list[Problem] = []
    for path, reason in refused.items():
        placed = place(path, tenants_dir)
        problems.append(Problem(path, 1, 1, reason, placed.org if placed else None))
    with gc_paused():  # thousands of small models: collection passes only cost time here
        last, cache.last = cache.last, None  # taken: put back only by a clean load
        if last is not None and not refused:
            patched = _patched(last, sources, tenants_dir, cache, today)
            if patched is not None:
                return patched
        return _load_placed(sources, tenants_dir, cache, today, problems, jobs, checked or {})


_Entry = tuple[SourceFile, Placed, str, "type[Tunnel | Gateway]"]


def _load_placed(sources: list[SourceFile], tenants_dir: bool, cache: ParseCache, today: date,
                 problems: list[Problem], jobs: int,
                 checked: Mapping[str, FileCheck]) -> RepoState:
    entries: list[_Entry] = []
    org_of: dict[str, str | None] = {}
    for sf in sources:
        placed = place(sf.path, tenants_dir)
        if placed is None:
            continue
        org_of[sf.path] = placed.org
        if placed.kind == "misplaced":
            problems.append(Problem(sf.path, 1, 1, placed.message, placed.org))
            continue
        kind = Gateway if placed.kind == "gateway" else Tunnel
        entries.append((sf, placed, content_key(sf), kind))
        if sf.path in checked:
            cache.add(entries[-1][2], kind, checked[sf.path])
    cache.prefill([(key, kind, sf.data) for sf, _, key, kind in entries], jobs)

    by_path: dict[str, tuple[str, SourceFile]] = {}
    gateway_files: list[GatewayFile] = []
    tunnel_files: list[TunnelFile] = []
    gateways_complete = True
    for sf, placed, key, kind in entries:
        by_path[sf.path] = (key, sf)
        result = cache.check(key, kind, sf.data)
        if result.issues:
            problems.extend(Problem(sf.path, i.line, i.col, i.message, placed.org)
                            for i in result.issues)
        if isinstance(result.model, Tunnel):
            tunnel_files.append(TunnelFile(sf.path, placed.org or "", placed.stem,
                                           result.model, key))
        elif isinstance(result.model, Gateway):
            gateway_files.append(GatewayFile(sf.path, result.model, key))
        elif kind is Gateway:
            gateways_complete = False
    if not gateway_files and gateways_complete:  # no gateway file at all (none failed either)
        problems.append(Problem("gateway.yaml", 1, 1, "no gateway file: add gateway.yaml "
                                "(or gateways/<name>.yaml) at the repo root"))
        gateways_complete = False

    node_of: dict[str, Node | None] = {}  # node trees of files named in findings, this load only

    def locate(path: str, loc: Loc) -> tuple[int, int]:
        key, sf = by_path[path]
        return cache.position(key, loc, node_of, sf.data)

    gateways = {gf.gateway.name: gf for gf in gateway_files}
    findings: list[Finding] = check_gateways(gateway_files)
    findings += tunnel_findings(tunnel_files, gateways, locate, today, gateways_complete,
                                 cache, clean_so_far=not findings)
    for f in findings:
        line, col = locate(f.path, f.loc)
        problems.append(Problem(f.path, line, col, f.message, org_of.get(f.path)))
    if len(cache) > len(by_path):  # something changed or was removed: forget old content
        cache.keep_only({key for key, _ in by_path.values()})

    problems = _capped(problems)
    broken = frozenset(p.org for p in problems if p.org is not None)
    blocked = any(p.org is None for p in problems)
    all_tunnels = tuple(tf.tunnel for tf in tunnel_files)
    # A file in folder acme/ that claims org: other is acme's problem and applies for nobody.
    good = () if blocked else tuple(tf.tunnel for tf in tunnel_files
                                    if tf.folder not in broken and tf.tunnel.org not in broken)
    state = RepoState(
        gateways={name: gf.gateway for name, gf in gateways.items()},
        tunnels=good,
        problems=tuple(problems),
        broken_orgs=broken,
        all_tunnels=all_tunnels,
        paths={tf.tunnel.ident: tf.path for tf in tunnel_files},
    )
    if not problems:
        cache.last = LastLoad({sf.path: sf for sf in sources}, tenants_dir,
                               {tf.path: tf for tf in tunnel_files}, gateway_files, state,
                               today)
    return state


def _capped(problems: list[Problem]) -> list[Problem]:
    """Sorted, at most MAX_ISSUES_PER_FILE per file (16k copies of one mistake stay readable)."""
    problems = sorted(set(problems), key=lambda p: (p.file, p.line, p.col, p.message))
    total: dict[str, int] = {}
    for p in problems:
        total[p.file] = total.get(p.file, 0) + 1
    out: list[Problem] = []
    seen: dict[str, int] = {}
    for p in problems:
        n = seen[p.file] = seen.get(p.file, 0) + 1
        if n < MAX_ISSUES_PER_FILE or total[p.file] == MAX_ISSUES_PER_FILE:
            out.append(p)
        elif n == MAX_ISSUES_PER_FILE:
            out.append(Problem(p.file, p.line, p.col, f"... and {total[p.file] - n + 1} more "
                               "problems in this file", p.org))
    return out


def load_repo(path: Path | str, cache: ParseCache | None = None,
              today: date | None = None, *, jobs: int = 1) -> RepoState:
    """Load and validate the config repo rooted at `path` (the folder with gateway.yaml).
    `jobs > 1` lets a cold load fork a helper that reads and parses part of the files (only
    from single-threaded code)."""
    cache = cache if cache is not None else ParseCache()
    if jobs < 2 or len(cache) or cache.last is not None:  # warm: most files are cached
        files, refused = scan_dir(path)
        return _load(files, cache, today, refused, jobs)
    with gc_paused():
        paths, refused = list_dir(path)
        files, checked = _read_checked(os.fspath(path), paths, jobs)
        return _load(files, cache, today, refused, jobs, checked)


def _read_checked(base: str, paths: list[str],
                  jobs: int) -> tuple[list[SourceFile], dict[str, FileCheck]]:
    """The listed files, read, and the single-file checks of the gateway and tunnel files
    among them, both made on `jobs` processes (repo.parallel) right after the listing."""
    tenants_dir = any(p.startswith("tenants/") for p in paths)
    kinds: dict[str, type[Tunnel | Gateway]] = {}
    for p in paths:
        placed = place(p, tenants_dir)
        if placed is not None and placed.kind != "misplaced":
            kinds[p] = Gateway if placed.kind == "gateway" else Tunnel
    done = dict(zip(kinds, read_and_check([(os.path.join(base, p), k)
                                           for p, k in kinds.items()], jobs)))
    files: list[SourceFile] = []
    checked: dict[str, FileCheck] = {}
    for p in paths:
        data, check = done[p] if p in done else (read_capped(os.path.join(base, p)), None)
        files.append(SourceFile(p, data))
        if check is not None:
            checked[p] = check
    return files, checked
