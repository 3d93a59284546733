"""Where a config repository starts on disk, from any path inside it (a tunnel file, an org
folder, the repo root, or a checkout of this project with its example under tenants/)."""

from __future__ import annotations

from pathlib import Path


def find_root(path: Path) -> Path | None:
    """The config repo root for `path`: the nearest folder (itself or a parent) holding
    gateway.yaml or gateways/, or `path/tenants` when that is one (this project's layout)."""
    start = path.resolve()
    if not start.is_dir():
        start = start.parent

    def is_root(folder: Path) -> bool:
        return (folder / "gateway.yaml").is_file() or (folder / "gateways").is_dir()

    if is_root(start):
        return start
    if is_root(start / "tenants"):
        return start / "tenants"
    return next((p for p in start.parents if is_root(p)), None)


def git_toplevel(start: Path) -> Path | None:
    for folder in (start.resolve(), *start.resolve().parents):
        if (folder / ".git").exists():
            return folder
    return None
