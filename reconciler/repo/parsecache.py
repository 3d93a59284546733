"""The load stage's memory between loads: single-file results by content (ParseCache), the
cross-file rules' memo and clean index, and the last load without problems (LastLoad), which
the next load patches (repo.incremental)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from yaml.nodes import Node

from reconciler.repo import yamlio
from reconciler.repo.crossfile import CleanIndex, GatewayFile, RuleMemo, TunnelFile
from reconciler.repo.fileload import FileCheck, Issue, check_document
from reconciler.repo.layout import SourceFile
from reconciler.repo.model import Gateway, Tunnel
from reconciler.repo.parallel import MIN_FILES as MIN_PARALLEL_FILES
from reconciler.repo.parallel import check_all
from reconciler.repo.repostate import RepoState
from reconciler.repo.yamlio import Loc


class ParseCache:
    """Single-file results by content, so unchanged files are not parsed again.

    Keyed by git blob id (or sha1 of the bytes) and file kind. `load_files` drops entries
    whose content was not part of the last load, so the cache never outgrows the repo.
    """

    def __init__(self) -> None:
        self._checks: dict[tuple[str, str], FileCheck] = {}
        self._positions: dict[tuple[str, Loc], tuple[int, int]] = {}
        self.rule_memo: RuleMemo = {}
        # The last load's tunnels when it had no cross-file finding (see incremental.tunnel_findings).
        self.clean_index: CleanIndex | None = None
        # The last load when it had no problem at all: the next one patches it (incremental.patched).
        self.last: LastLoad | None = None
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

    def add(self, content_key: str, kind: type[Tunnel | Gateway], result: FileCheck) -> None:
        """A result checked beforehand (repo.parallel.read_and_check), unless already known."""
        key = (content_key, kind.__name__)
        if key not in self._checks:
            self.misses += 1
            self._checks[key] = result

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


@dataclass(frozen=True)
class LastLoad:
    """A load without any problem, kept so that the next load can patch it."""

    files: dict[str, SourceFile]  # every source file by path, as given
    tenants_dir: bool
    tunnel_files: dict[str, TunnelFile]  # by path, in the order of the files
    gateway_files: list[GatewayFile]
    state: RepoState
    today: date  # the cross-file rules depend on the day (revoked tunnels' subnets)
