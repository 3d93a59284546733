"""Incremental loading: a load patched from the last clean one with only the files that
differ, and the cross-file rules checked for the changed files against an index of the rest.
Anything unusual returns None or falls back to the full check, so a result always equals a
full load's (randomised equivalence test, tests/test_load_patched.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import date
from operator import attrgetter

from yaml.nodes import Node

from reconciler.repo.crossfile import (
    CleanIndex,
    Finding,
    GatewayFile,
    TunnelFile,
    check_changed,
    check_tunnels,
)
from reconciler.repo.layout import SourceFile, content_key, place
from reconciler.repo.model import Tunnel
from reconciler.repo.parsecache import LastLoad, ParseCache
from reconciler.repo.repostate import RepoState
from reconciler.repo.yamlio import Loc

PATCH_MAX_FILES = 256  # more changed files than this: a full load is as cheap


def patched(last: LastLoad, sources: list[SourceFile], tenants_dir: bool,
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
    removed = [p for p in prev.keys() - now.keys() if place(p, tenants_dir) is not None]
    if not changed and not removed and len(now) == len(sources) and today == last.today:
        cache.last = replace(last, files=now)
        return last.state
    if len(changed) + len(removed) > PATCH_MAX_FILES or len(now) != len(sources):
        return None
    tunnel_files = dict(last.tunnel_files)
    paths = dict(last.state.paths)
    for path in removed:
        placed = place(path, tenants_dir)
        if placed is None or placed.kind != "tunnel":
            return None  # a gateway file went away
        gone = tunnel_files.pop(path)
        paths.pop(gone.tunnel.ident, None)
    reorder = bool(removed)
    for sf in changed:
        placed = place(sf.path, tenants_dir)
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
    if index is not None and index.signature == index_signature(today, True, gateways):
        # The index is the last load's: the changed and removed files are known already,
        # no 16k-file comparison against it (what tunnel_findings would do).
        touched = [tunnel_files[sf.path] for sf in changed if sf.path in tunnel_files]
        if not check_changed(index, touched, removed, gateways, cache.rule_memo):
            return None  # a finding: the full load reports it, at its place
        cache.clean_index = index
    elif tunnel_findings(files, gateways, locate, today, True, cache, clean_so_far=True):
        return None  # the full load reports them, at their places
    if len(cache) > len(now) + PATCH_MAX_FILES:  # forget old content now and then
        cache.keep_only({content_key(sf) for sf in sources})
    tunnels = tuple(map(attrgetter("tunnel"), files))
    state = RepoState(gateways=last.state.gateways, tunnels=tunnels, problems=(),
                      broken_orgs=frozenset(), all_tunnels=tunnels, paths=paths)
    cache.last = LastLoad(now, tenants_dir, tunnel_files, last.gateway_files, state, today)
    return state


INCREMENTAL_MAX_FILES = 256  # more changed files than this: one full sweep is as cheap


def tunnel_findings(tunnel_files: list[TunnelFile], gateways: dict[str, GatewayFile],
                     locate: Callable[[str, Loc], tuple[int, int]], today: date,
                     gateways_complete: bool, cache: ParseCache,
                     clean_so_far: bool) -> list[Finding]:
    """check_tunnels, or, when the last load through this cache was clean with the same
    gateways and day, only the changed tunnel files checked against an index of the rest
    (crossfile.CleanIndex); any finding there falls back to the full check, so the result
    is always exactly a full load's. Changed files are found by their blob ids."""
    signature = index_signature(today, gateways_complete, gateways)
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


def index_signature(today: date, gateways_complete: bool,
               gateways: Mapping[str, GatewayFile]) -> tuple[object, ...]:
    """What a clean-load index depends on besides the tunnel files."""
    return (today, gateways_complete,
            tuple(sorted((name, gf.key) for name, gf in gateways.items())))
