"""The config repo's layout: where a path sits (a gateway file, a tunnel file of an org,
misplaced, or no repo file at all), the files as the load stage takes them (SourceFile), and
reading them from a folder on disk.

Gateway files: `gateway.yaml` and/or `gateways/*.yaml` at the root; tunnel files either in
`tenants/<org>/<name>.yaml` (when the root has a tenants/ folder) or in `<org>/<name>.yaml`.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from reconciler.repo import yamlio


@dataclass(frozen=True)
class SourceFile:
    path: str  # repo-relative, posix separators
    data: bytes
    blob_id: str | None = None  # git blob sha when read from a commit; a content key


def content_key(sf: SourceFile) -> str:
    if sf.blob_id:
        return f"git:{sf.blob_id}"
    return f"sha1:{hashlib.sha1(sf.data, usedforsecurity=False).hexdigest()}"


@dataclass(frozen=True)
class Placed:
    """Where a path sits in the layout: a gateway, a tunnel of an org, or misplaced."""
    kind: str  # "gateway" | "tunnel" | "misplaced"
    org: str | None = None
    stem: str = ""
    message: str = ""


@functools.lru_cache(maxsize=1 << 17)  # paths repeat on every load
def place(path: str, tenants_dir: bool) -> Placed | None:
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
            return Placed("misplaced", None, message="gateway files end in .yaml; rename it")
        return Placed("gateway")
    if tenants_dir and parts[0] != "tenants":
        return None  # other files of a bigger repo (CI config, docs)
    org_parts = parts[1:] if tenants_dir else parts
    if len(org_parts) == 2:
        if suffix == ".yml":
            return Placed("misplaced", org_parts[0], message=f"tunnel files end in .yaml; "
                           f"rename it to {stem}.yaml")
        return Placed("tunnel", org_parts[0], stem)
    where = "tenants/<org>/<name>.yaml" if tenants_dir else "<org>/<name>.yaml"
    org = org_parts[0] if len(org_parts) > 2 else None
    return Placed("misplaced", org, message=f"not a gateway file and not where tunnel files "
                   f"go; move it to {where} (or gateway.yaml for a gateway)")


def read_capped(path: str) -> bytes:
    # Read at most one byte over the limit: a huge file is reported, not loaded into memory.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        # Asking for exactly what is there: os.read allocates its whole size argument.
        return os.read(fd, min(os.fstat(fd).st_size, yamlio.MAX_FILE_BYTES) + 1)
    finally:
        os.close(fd)


def list_dir(root: Path | str) -> tuple[list[str], dict[str, str]]:
    """Repo file paths under `root` (gateway files and up to tenants/<org>/<file>), sorted,
    skipping hidden entries, and the paths refused with a reason (symlinks and special files:
    never followed, a link could point anywhere on the host). Nothing is read yet."""
    base = os.fspath(root)
    out: list[str] = []
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
                    out.append(path)

    walk("", 1)
    return out, refused


def scan_dir(root: Path | str) -> tuple[list[SourceFile], dict[str, str]]:
    """The files of `list_dir(root)`, read (at most MAX_FILE_BYTES + 1 bytes each), and the
    refused paths."""
    paths, refused = list_dir(root)
    base = os.fspath(root)
    return [SourceFile(p, read_capped(os.path.join(base, p))) for p in paths], refused
