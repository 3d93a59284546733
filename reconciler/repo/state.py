"""Load stage: config repository files -> RepoState (validated desired state + problems).

    load_files(files, cache=None, today=None) -> RepoState   # files from a git tree or a disk
    load_repo(path, cache=None, today=None) -> RepoState     # a folder on disk
    RepoState.gateways / .tunnels / .problems / .broken_orgs / .ok / .for_gateway(name)
    Problem(file, line, col, message, org)

Repo layout: `gateway.yaml` and/or `gateways/*.yaml` at the root; tunnel files either in
`tenants/<org>/<name>.yaml` (when the root has a tenants/ folder) or in `<org>/<name>.yaml`.

Loading is incremental: the single-file stage (parse + schema, the expensive part) is cached by
content in a ParseCache, so a cycle after a one-file commit parses one file. After a load
without problems, the next load patches it with only the files that differ (the cross-file
rules checked for those against an index of the rest); anything unusual loads in full.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from operator import attrgetter
from pathlib import Path

from yaml.nodes import Node

from reconciler.repo import yamlio
from reconciler.repo.crossfile import (
    CleanIndex,
    Finding,
    GatewayFile,
    RuleMemo,
    TunnelFile,
    check_changed,
    check_gateways,
    check_tunnels,
)
from reconciler.repo.fileload import MAX_ISSUES_PER_FILE, FileCheck, Issue, check_document
from reconciler.repo.model import Gateway, Tunnel
from reconciler.repo.parallel import MIN_FILES as MIN_PARALLEL_FILES
from reconciler.repo.parallel import check_all
from reconciler.repo.yamlio import Loc


@dataclass(frozen=True, order=True)
class Problem:
    file: str  # repo-relative path
    line: int  # 1-based
    col: int  # 1-based
    message: str
    org: str | None = None  # the org of the file; None (gateway files) blocks every org

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class GatewayChoiceError(ValueError):
    """No gateway, an unknown one, or several without a choice."""


@dataclass(frozen=True)
class RepoState:
    gateways: Mapping[str, Gateway]
    tunnels: tuple[Tunnel, ...]  # tunnels of orgs without any problem (none if a gateway is broken)
    problems: tuple[Problem, ...] = ()
    broken_orgs: frozenset[str] = field(default_factory=frozenset)
    # Every tunnel that passed its own file's rules, broken org or not (they still occupy
    # addresses: the allocator must avoid them), and where each tunnel came from.
    all_tunnels: tuple[Tunnel, ...] = ()
    paths: Mapping[str, str] = field(default_factory=dict)  # ident "org/name" -> repo path

    @property
    def ok(self) -> bool:
        return not self.problems

    def gateway(self, name: str | None) -> Gateway:
        """The named gateway, or the only one; raises GatewayChoiceError saying what to do."""
        if name is not None:
            if name not in self.gateways:
                raise GatewayChoiceError(
                    f"gateway {name!r} is not in the repo (or its file has problems); "
                    f"known: {', '.join(sorted(self.gateways)) or 'none'}")
            return self.gateways[name]
        if len(self.gateways) == 1:
            return next(iter(self.gateways.values()))
        if not self.gateways:
            raise GatewayChoiceError("the repo has no valid gateway file; run 'tunnelctl "
                                     "validate' and fix gateway.yaml first")
        raise GatewayChoiceError(f"the repo has several gateways "
                                 f"({', '.join(sorted(self.gateways))}); choose one with --gateway")

    def for_gateway(self, name: str) -> tuple[Tunnel, ...]:
        return tuple(t for t in self.tunnels if t.gateway == name)


@dataclass(frozen=True)
class SourceFile:
    path: str  # repo-relative, posix separators
    data: bytes
    blob_id: str | None = None  # git blob sha when read from a commit; a content key


class ParseCache:
    """Single-file results by content, so unchanged files are not parsed again.

    Keyed by git blob id (or sha1 of the bytes) and file kind. `load_files` drops entries
    whose content was not part of the last load, so the cache never outgrows the repo.
    """

    def __init__(self) -> None:
        self._checks: dict[tuple[str, str], FileCheck] = {}
        self._positions: dict[tuple[str, Loc], tuple[int, int]] = {}
        self.rule_memo: RuleMemo = {}
        # The last load's tunnels when it had no cross-file finding (see _tunnel_findings).
        self.clean_index: CleanIndex | None = None
        # The last load when it had no problem at all: the next one patches it (_patched).
        self.last: _LastLoad | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._checks)

    def check(self, content_key: str, kind: type[Tunnel | Gateway], data: bytes) -> FileCheck:
        key = (content_key, kind.__name__)
        found = self._checks.get(key)
        if found is None:
            self.misses += 1
            found = self._checks[key] = _safe_check(data, kind)
        else:
            self.hits += 1
        return found

    def prefill(self, items: list[tuple[str, type[Tunnel | Gateway], bytes]],
                jobs: int) -> None:
        """Check every uncached file at once, on `jobs` processes when it pays off."""
        todo = {(key, kind.__name__): (data, kind) for key, kind, data in items
                if (key, kind.__name__) not in self._checks}
        if jobs < 2 or len(todo) < MIN_PARALLEL_FILES:
            return  # `check` does them one by one
        try:
            results = check_all(list(todo.values()), jobs)
        except Exception:  # noqa: BLE001  (`check` does them one by one instead)
            return
        self._checks.update(zip(todo, results))
        self.misses += len(todo)

    def position(self, content_key: str, loc: Loc, node_of: dict[str, Node | None],
                 data: bytes) -> tuple[int, int]:
        key = (content_key, loc)
        found = self._positions.get(key)
        if found is None:
            if content_key not in node_of:
                node_of[content_key] = yamlio.compose(data)
            found = self._positions[key] = yamlio.position(node_of[content_key], loc)
        return found

    def keep_only(self, content_keys: set[str]) -> None:
        self._checks = {k: v for k, v in self._checks.items() if k[0] in content_keys}
        self._positions = {k: v for k, v in self._positions.items() if k[0] in content_keys}
        self.rule_memo = {k: v for k, v in self.rule_memo.items()
                          if k[0] in content_keys and k[1] in content_keys}


def _safe_check(data: bytes, kind: type[Tunnel | Gateway]) -> FileCheck:
    try:
        return check_document(data, kind)
    except Exception as exc:  # noqa: BLE001  (one odd file must not stop the load)
        return FileCheck(None, (Issue(1, 1, f"internal error while checking this file "
                                      f"({type(exc).__name__}: {exc}); please report it"),))


def content_key(sf: SourceFile) -> str:
    if sf.blob_id:
        return f"git:{sf.blob_id}"
    return f"sha1:{hashlib.sha1(sf.data, usedforsecurity=False).hexdigest()}"


@dataclass(frozen=True)
class _Placed:
    """Where a path sits in the layout: a gateway, a tunnel of an org, or misplaced."""
    kind: str  # "gateway" | "tunnel" | "misplaced"
    org: str | None = None
    stem: str = ""
    message: str = ""


@functools.lru_cache(maxsize=1 << 17)  # paths repeat on every load
def _place(path: str, tenants_dir: bool) -> _Placed | None:
    parts = path.split("/")
    last = parts[-1]
    if last.endswith(".yaml"):
        suffix, stem = ".yaml", last[:-5]
    elif last.endswith(".yml"):
        suffix, stem = ".yml", last[:-4]
    else:
        return None
    if any(not p or p.startswith(".") for p in parts):
        return None
    if (len(parts) == 1 and last == "gateway.yaml") or (len(parts) == 2 and parts[0] == "gateways"):
        if suffix == ".yml":
            return _Placed("misplaced", None, message="gateway files end in .yaml; rename it")
        return _Placed("gateway")
    if tenants_dir and parts[0] != "tenants":
        return None  # other files of a bigger repo (CI config, docs)
    org_parts = parts[1:] if tenants_dir else parts
    if len(org_parts) == 2:
        if suffix == ".yml":
            return _Placed("misplaced", org_parts[0], message=f"tunnel files end in .yaml; "
                           f"rename it to {stem}.yaml")
        return _Placed("tunnel", org_parts[0], stem)
    where = "tenants/<org>/<name>.yaml" if tenants_dir else "<org>/<name>.yaml"
    org = org_parts[0] if len(org_parts) > 2 else None
    return _Placed("misplaced", org, message=f"not a gateway file and not where tunnel files "
                   f"go; move it to {where} (or gateway.yaml for a gateway)")


def load_files(files: Iterable[SourceFile], cache: ParseCache | None = None,
               today: date | None = None, *, jobs: int = 1) -> RepoState:
    """Validate a whole repo given as files (from a git tree or a folder). `today` decides
    which revoked tunnels still hold their subnet (default: the current date). `jobs > 1`
    lets a cold load of a big repo fork a helper process (only from single-threaded code)."""
    return _load(files, cache, today, {}, jobs)


def _load(files: Iterable[SourceFile], cache: ParseCache | None, today: date | None,
          refused: Mapping[str, str], jobs: int = 1) -> RepoState:
    today = today or date.today()
    cache = cache if cache is not None else ParseCache()
    sources = list(files)
    tenants_dir = any(f.path.startswith("tenants/") for f in sources)
    problems: list[Problem] = []
    for path, reason in refused.items():
        placed = _place(path, tenants_dir)
        problems.append(Problem(path, 1, 1, reason, placed.org if placed else None))
    gc_was_enabled = gc.isenabled()
    gc.disable()  # thousands of small models: collection passes only cost time here
    try:
        last, cache.last = cache.last, None  # taken: put back only by a clean load
        if last is not None and not refused:
            patched = _patched(last, sources, tenants_dir, cache, today)
            if patched is not None:
                return patched
        return _load_placed(sources, tenants_dir, cache, today, problems, jobs)
    finally:
        if gc_was_enabled:
            gc.enable()


_Entry = tuple[SourceFile, _Placed, str, "type[Tunnel | Gateway]"]


def _load_placed(sources: list[SourceFile], tenants_dir: bool, cache: ParseCache, today: date,
                 problems: list[Problem], jobs: int) -> RepoState:
    entries: list[_Entry] = []
    org_of: dict[str, str | None] = {}
    for sf in sources:
        placed = _place(sf.path, tenants_dir)
        if placed is None:
            continue
        org_of[sf.path] = placed.org
        if placed.kind == "misplaced":
            problems.append(Problem(sf.path, 1, 1, placed.message, placed.org))
            continue
        kind = Gateway if placed.kind == "gateway" else Tunnel
        entries.append((sf, placed, content_key(sf), kind))
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
    findings += _tunnel_findings(tunnel_files, gateways, locate, today, gateways_complete,
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
        cache.last = _LastLoad({sf.path: sf for sf in sources}, tenants_dir,
                               {tf.path: tf for tf in tunnel_files}, gateway_files, state,
                               today)
    return state


@dataclass(frozen=True)
class _LastLoad:
    """A load without any problem, kept so that the next load can patch it."""

    files: dict[str, SourceFile]  # every source file by path, as given
    tenants_dir: bool
    tunnel_files: dict[str, TunnelFile]  # by path, in the order of the files
    gateway_files: list[GatewayFile]
    state: RepoState
    today: date  # the cross-file rules depend on the day (revoked tunnels' subnets)


PATCH_MAX_FILES = 256  # more changed files than this: a full load is as cheap


def _patched(last: _LastLoad, sources: list[SourceFile], tenants_dir: bool,
             cache: ParseCache, today: date) -> RepoState | None:
    """The load of `sources` as `last` patched with only the files that differ from it
    (by identity or blob id: a git listing hands the same SourceFile for an unchanged file),
    or None when a full load must run: a gateway file or the layout changed, a changed
    file has a problem, too many changed, or any cross-file finding. So the result always
    equals a full load's (randomised equivalence test), without a 16k-file loop per commit."""
    if tenants_dir != last.tenants_dir:
        return None
    prev = last.files
    now = {sf.path: sf for sf in sources}
    changed = [sf for sf in sources if prev.get(sf.path) is not sf]
    changed = [sf for sf in changed if sf.blob_id is None or
               getattr(prev.get(sf.path), "blob_id", None) != sf.blob_id]
    removed = [p for p in prev.keys() - now.keys() if _place(p, tenants_dir) is not None]
    if not changed and not removed and len(now) == len(sources) and today == last.today:
        cache.last = replace(last, files=now)
        return last.state
    if len(changed) + len(removed) > PATCH_MAX_FILES or len(now) != len(sources):
        return None
    tunnel_files = dict(last.tunnel_files)
    paths = dict(last.state.paths)
    for path in removed:
        placed = _place(path, tenants_dir)
        if placed is None or placed.kind != "tunnel":
            return None  # a gateway file went away
        gone = tunnel_files.pop(path)
        paths.pop(gone.tunnel.ident, None)
    reorder = bool(removed)
    for sf in changed:
        placed = _place(sf.path, tenants_dir)
        if placed is None:
            continue  # not a repo file (CI config, docs)
        if placed.kind != "tunnel":
            return None
        key = content_key(sf)
        result = cache.check(key, Tunnel, sf.data)
        if result.issues or not isinstance(result.model, Tunnel):
            return None
        old = tunnel_files.get(sf.path)
        if old is None:
            reorder = True
        else:
            paths.pop(old.tunnel.ident, None)
        tunnel_files[sf.path] = TunnelFile(sf.path, placed.org or "", placed.stem,
                                           result.model, key)
        paths[result.model.ident] = sf.path
    if reorder:  # the order of the files, as a full load has it
        tunnel_files = {sf.path: tunnel_files[sf.path] for sf in sources
                        if sf.path in tunnel_files}
    gateways = {gf.gateway.name: gf for gf in last.gateway_files}
    node_of: dict[str, Node | None] = {}

    def locate(path: str, loc: Loc) -> tuple[int, int]:
        sf = now[path]
        return cache.position(content_key(sf), loc, node_of, sf.data)

    files = list(tunnel_files.values())
    index, cache.clean_index = cache.clean_index, None  # taken: put back only when clean
    if index is not None and index.signature == _signature(today, True, gateways):
        # The index is the last load's: the changed and removed files are known already,
        # no 16k-file comparison against it (what _tunnel_findings would do).
        touched = [tunnel_files[sf.path] for sf in changed if sf.path in tunnel_files]
        if not check_changed(index, touched, removed, gateways, cache.rule_memo):
            return None  # a finding: the full load reports it, at its place
        cache.clean_index = index
    elif _tunnel_findings(files, gateways, locate, today, True, cache, clean_so_far=True):
        return None  # the full load reports them, at their places
    if len(cache) > len(now) + PATCH_MAX_FILES:  # forget old content now and then
        cache.keep_only({content_key(sf) for sf in sources})
    tunnels = tuple(map(attrgetter("tunnel"), files))
    state = RepoState(gateways=last.state.gateways, tunnels=tunnels, problems=(),
                      broken_orgs=frozenset(), all_tunnels=tunnels, paths=paths)
    cache.last = _LastLoad(now, tenants_dir, tunnel_files, last.gateway_files, state, today)
    return state


INCREMENTAL_MAX_FILES = 256  # more changed files than this: one full sweep is as cheap


def _tunnel_findings(tunnel_files: list[TunnelFile], gateways: dict[str, GatewayFile],
                     locate: Callable[[str, Loc], tuple[int, int]], today: date,
                     gateways_complete: bool, cache: ParseCache,
                     clean_so_far: bool) -> list[Finding]:
    """check_tunnels, or, when the last load through this cache was clean with the same
    gateways and day, only the changed tunnel files checked against an index of the rest
    (crossfile.CleanIndex); any finding there falls back to the full check, so the result
    is always exactly a full load's. Changed files are found by their blob ids."""
    signature = _signature(today, gateways_complete, gateways)
    index, cache.clean_index = cache.clean_index, None  # taken: put back only when clean
    if index is not None and clean_so_far and gateways_complete and index.signature == signature:
        now = {tf.path: tf for tf in tunnel_files}
        keys = index.keys
        changed = [tf for tf in tunnel_files if keys.get(tf.path) != tf.key or not tf.key]
        removed = [p for p in keys if p not in now]
        if len(changed) + len(removed) <= INCREMENTAL_MAX_FILES and \
                check_changed(index, changed, removed, gateways, cache.rule_memo):
            cache.clean_index = index
            return []
    findings = check_tunnels(tunnel_files, gateways, locate, today,
                             gateways_complete=gateways_complete, memo=cache.rule_memo)
    if not findings and clean_so_far and gateways_complete:
        cache.clean_index = CleanIndex.build(tunnel_files, signature, today)
    return findings


def _signature(today: date, gateways_complete: bool,
               gateways: Mapping[str, GatewayFile]) -> tuple[object, ...]:
    """What a clean-load index depends on besides the tunnel files."""
    return (today, gateways_complete,
            tuple(sorted((name, gf.key) for name, gf in gateways.items())))


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


def _read_capped(path: str) -> bytes:
    # Read at most one byte over the limit: a huge file is reported, not loaded into memory.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        # Asking for exactly what is there: os.read allocates its whole size argument.
        return os.read(fd, min(os.fstat(fd).st_size, yamlio.MAX_FILE_BYTES) + 1)
    finally:
        os.close(fd)


def scan_dir(root: Path | str) -> tuple[list[SourceFile], dict[str, str]]:
    """Repo files under `root` (gateway files and up to tenants/<org>/<file>), skipping hidden
    entries, and the paths refused with a reason (symlinks and special files: never followed,
    a link could point anywhere on the host)."""
    base = os.fspath(root)
    out: list[SourceFile] = []
    refused: dict[str, str] = {}

    def walk(rel: str, depth: int) -> None:
        with os.scandir(os.path.join(base, rel) if rel else base) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.name.startswith("."):
                continue
            path = f"{rel}/{e.name}" if rel else e.name
            if e.is_dir(follow_symlinks=False):
                if depth < 3:
                    walk(path, depth + 1)
            elif e.name.endswith((".yaml", ".yml")):
                if e.is_symlink() or not e.is_file(follow_symlinks=False):
                    refused[path] = ("symlinks and special files are not allowed in the repo; "
                                     "replace it with a regular file")
                else:
                    out.append(SourceFile(path, _read_capped(e.path)))

    walk("", 1)
    return out, refused


def load_repo(path: Path | str, cache: ParseCache | None = None,
              today: date | None = None, *, jobs: int = 1) -> RepoState:
    """Load and validate the config repo rooted at `path` (the folder with gateway.yaml)."""
    files, refused = scan_dir(path)
    return _load(files, cache, today, refused, jobs)
