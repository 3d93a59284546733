"""A real git remote for service tests: a bare repository on disk plus a work clone ops push from.

Every operation is the git command line, as an operator would run it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ops", "GIT_AUTHOR_EMAIL": "ops@example.net",
    "GIT_COMMITTER_NAME": "Ops", "GIT_COMMITTER_EMAIL": "ops@example.net",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
}


def git(cwd: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


class ConfigRemote:
    """`bare` is the remote the service fetches from; `work` is an operator's clone."""

    def __init__(self, root: Path, branch: str = "main") -> None:
        self.root = root
        self.bare = root / "remote.git"
        self.work = root / "work"
        self.branch = branch
        root.mkdir(parents=True, exist_ok=True)
        git(root, "init", "-q", "--bare", "-b", branch, str(self.bare))
        git(root, "init", "-q", "-b", branch, str(self.work))
        git(self.work, "remote", "add", "origin", str(self.bare))
        self.signing_key: Path | None = None

    def write(self, files: Mapping[str, str | bytes | None]) -> None:
        """Write (or delete, for None) files in the work tree."""
        for rel, content in files.items():
            path = self.work / rel
            if content is None:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)

    def commit(self, files: Mapping[str, str | bytes | None] | None = None, message: str = "change",
               *, sign: bool = False, push: bool = True) -> str:
        if files:
            self.write(files)
        git(self.work, "add", "-A")
        args = ["commit", "-q", "--allow-empty", "-m", message]
        if sign:
            assert self.signing_key is not None, "call enable_ssh_signing first"
            args.insert(1, "-S")
        git(self.work, *args)
        if push:
            self.push()
        return self.head()

    def replace_tree(self, src: Path, message: str = "replace tree", **kw: bool) -> str:
        """Make the work tree's content exactly `src` (keeps .git), commit and push."""
        for child in self.work.iterdir():
            if child.name != ".git":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        shutil.copytree(src, self.work, dirs_exist_ok=True)
        return self.commit(None, message, **kw)

    def push(self, force: bool = False) -> None:
        git(self.work, "push", "-q", *(["--force"] if force else []), "origin",
            f"HEAD:refs/heads/{self.branch}")

    def head(self) -> str:
        return git(self.work, "rev-parse", "HEAD")

    def rewind(self, to: str) -> None:
        """Force-push history back to `to` (what a careless `git push -f` does)."""
        git(self.work, "reset", "-q", "--hard", to)
        self.push(force=True)

    def remote_head(self, ref: str | None = None) -> str | None:
        out = git(self.bare, "rev-parse", "--verify", "--quiet", ref or f"refs/heads/{self.branch}",
                  check=False)
        return out or None

    def enable_ssh_signing(self) -> Path:
        """Create an SSH signing key; returns an allowed-signers file trusting it."""
        key = self.root / "signing_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops", "-f", str(key)],
                       check=True)
        git(self.work, "config", "gpg.format", "ssh")
        git(self.work, "config", "user.signingkey", str(key))
        self.signing_key = key
        allowed = self.root / "allowed_signers"
        pub = (key.with_suffix(".pub")).read_text().split()
        allowed.write_text(f'ops@example.net namespaces="git" {pub[0]} {pub[1]}\n')
        return allowed

    def audit_entries(self, gateway: str) -> list[dict[str, Any]]:
        """Entries on audit/<gateway> in the bare remote, oldest first (from the JSONL files)."""
        import json

        ref = f"refs/heads/audit/{gateway}"
        if not self.remote_head(ref):
            return []
        files = git(self.bare, "ls-tree", "-r", "--name-only", ref).splitlines()
        entries: list[dict[str, object]] = []
        for name in sorted(files):
            text = git(self.bare, "show", f"{ref}:{name}")
            entries += [json.loads(line) for line in text.splitlines() if line.strip()]
        return entries
