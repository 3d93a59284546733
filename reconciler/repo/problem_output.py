"""Problem output for people and machines: `file:line:col: message` lines, GitHub workflow
annotations, or JSON. Paths are shown relative to a base folder so editors and GitHub can open
them (GitHub needs paths relative to the repository root)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from reconciler.repo.state import Problem, RepoState


def display_path(root: Path, rel: str, base: Path) -> str:
    """`rel` (repo-relative) as seen from `base`, or absolute when it is not under `base`."""
    full = (root / rel).absolute()
    try:
        return full.relative_to(base.absolute()).as_posix()
    except ValueError:
        return full.as_posix()


# A repo path followed by ":line" inside a message (how one file's problem names another).
_MENTIONED_PATH = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.ya?ml)(?=:\d)")


def rebase_message(message: str, root: Path, base: Path) -> str:
    """Show paths mentioned in a message the way the problem's own path is shown."""
    return _MENTIONED_PATH.sub(lambda m: display_path(root, m.group(1), base), message)


def in_scope(problem: Problem, scope: str) -> bool:
    """Problems under `scope` (a root-relative path; "" = everything). Problems without an org
    (gateway files) are always in scope: they make every tunnel unusable."""
    if not scope or problem.org is None:
        return True
    return problem.file == scope or problem.file.startswith(scope.rstrip("/") + "/")


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def format_text(problems: Sequence[Problem], paths: Sequence[str]) -> list[str]:
    return [f"{p}:{x.line}:{x.col}: {x.message}" for x, p in zip(problems, paths)]


def format_github(problems: Sequence[Problem], paths: Sequence[str]) -> list[str]:
    return [f"::error file={_escape_property(p)},line={x.line},col={x.col},"
            f"title=tunnelctl validate::{_escape_data(x.message)}"
            for x, p in zip(problems, paths)]


def format_json(problems: Sequence[Problem], paths: Sequence[str]) -> str:
    return json.dumps([{"file": p, "line": x.line, "col": x.col, "message": x.message,
                        "org": x.org} for x, p in zip(problems, paths)], indent=2)


def summary(state: RepoState, shown: Sequence[Problem]) -> str:
    orgs = {t.org for t in state.all_tunnels}
    if not shown:
        return (f"ok: {len(state.gateways)} gateway(s), {len(state.all_tunnels)} tunnel(s) "
                f"in {len(orgs)} org(s), no problems")
    files = len({p.file for p in shown})
    line = f"{len(shown)} problem(s) in {files} file(s)"
    if any(p.org is None for p in shown):
        return line + "; a gateway or repo-level problem blocks every org until fixed"
    broken = sorted({p.org for p in shown if p.org})
    return line + f"; orgs that cannot be applied: {', '.join(broken)}"
