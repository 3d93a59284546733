"""Benchmark config repos: N generated tenants as a real git repository (bare remote + clone).

Generated once per N and kept under bench/out/ (gitignored): the tunnel files come from the
lab's generator (keys made in-process), then are committed and pushed to a bare repository,
which is what the service fetches from. Router private keys (lab-only) stay in the same
gitignored folder, mode 0600, never in a tunnel file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from reconciler.lab import generate_repo

OUT = Path(__file__).resolve().parent / "out"
GATEWAY = "bench-1"
INTERFACE = "wg1"
FORMAT = 2  # bump when the generated layout changes, so stale caches are regenerated
GIT_ENV = {"GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.net",
           "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.net",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
LANS_RE = re.compile(r"^lans: \[(.*)\]$", re.MULTILINE)


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {cwd}: {proc.stderr.strip()}")
    return proc.stdout.strip()


@dataclass(frozen=True)
class BenchRepo:
    n: int
    keepalive: int | None  # cloud_keepalive written into every file; None = the YAML as generated
    root: Path
    keys: dict[str, str]  # "org/name" -> router private key; "gateway/<name>" -> cloud key
    files: tuple[str, ...]  # repo-relative tunnel file paths, in generation order

    @property
    def bare(self) -> Path:
        return self.root / "remote.git"

    @property
    def work(self) -> Path:
        """The operator's clone: the checked-out tree `validate` and `apply` read."""
        return self.root / "work"

    @property
    def gateway_only(self) -> Path:
        """A repo holding only gateway.yaml: what a lab needs when it builds no routers."""
        return self.root / "gateway-only"

    def idents(self) -> list[str]:
        return [f.rsplit(".", 1)[0] for f in self.files]

    def head(self) -> str:
        return git(self.work, "rev-parse", "HEAD")

    def commit(self, rel: str, text: str, message: str) -> str:
        """Write one file in the clone, commit it and push to the bare remote; the new sha."""
        (self.work / rel).write_text(text)
        git(self.work, "commit", "-q", "-m", message, "--", rel)
        git(self.work, "push", "-q", "origin", "HEAD:main")
        return self.head()

    def toggle_lan(self, rel: str, lan: str) -> tuple[str, str]:
        """Give the tunnel in `rel` the LAN `lan`, or take it away if it has it: the one-tenant
        change that touches every layer (peer AllowedIPs, one route, the firewall map)."""
        text = (self.work / rel).read_text()
        m = LANS_RE.search(text)
        if m is None:
            raise ValueError(f"{rel}: no 'lans: [...]' line")
        lans = [x.strip() for x in m.group(1).split(",") if x.strip()]
        action = "remove" if lan in lans else "add"
        lans = [x for x in lans if x != lan] if action == "remove" else [*lans, lan]
        new = text[:m.start()] + "lans: [" + ", ".join(lans) + "]" + text[m.end():]
        return action, self.commit(rel, new, f"bench: {action} LAN {lan} on {rel}")


def bench_repo(n: int, *, keepalive: int | None = None, out: Path = OUT,
               fresh: bool = False) -> BenchRepo:
    """The cached repo for (n, keepalive), generated (a few seconds at 16k) when missing.

    By default the tenants' files are exactly what the generator (like `tunnelctl new`)
    writes: the customer side keeps its NAT open (persistent_keepalive: 25) and the cloud's
    peers carry no keepalive, as in production. `keepalive` adds `cloud_keepalive: N` to
    every file, to measure a host that does send them."""
    root = out / (f"n{n}" if keepalive is None else f"n{n}-cka{keepalive}")
    meta = root / "meta.json"
    if not fresh and meta.exists():
        data = json.loads(meta.read_text())
        if data.get("format") == FORMAT:
            keys = json.loads((root / "keys.json").read_text())
            # A cache made by a clone elsewhere (or reached by a symlink) pushes to its own
            # remote, not to the folder it was made in.
            remote = str(root.resolve() / "remote.git")
            if git(root / "work", "remote", "get-url", "origin") != remote:
                git(root / "work", "remote", "set-url", "origin", remote)
            # The clone is what the remote holds: a run stopped between a commit and its push
            # would otherwise leave a change the service never sees.
            git(root / "work", "fetch", "-q", "origin", "main")
            git(root / "work", "reset", "-q", "--hard", "FETCH_HEAD")
            return BenchRepo(n, keepalive, root, keys, tuple(data["files"]))
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    work = root / "work"
    gen = generate_repo(work, n, gateway=GATEWAY, interface=INTERFACE)
    files = []
    for t in gen.tunnels:
        if keepalive is not None:
            t.path.write_text(t.path.read_text().replace(
                "persistent_keepalive: 25", f"persistent_keepalive: 25\ncloud_keepalive: {keepalive}"))
        files.append(t.path.relative_to(work).as_posix())
    git(root, "init", "-q", "--bare", "-b", "main", str(root / "remote.git"))
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", f"{n} generated tenants")
    git(work, "remote", "add", "origin", str(root / "remote.git"))
    git(work, "push", "-q", "origin", "main")
    (root / "gateway-only").mkdir()
    shutil.copy(work / "gateway.yaml", root / "gateway-only" / "gateway.yaml")
    keys_path = root / "keys.json"
    fd = os.open(keys_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(gen.private_keys, fh)
    meta.write_text(json.dumps({"format": FORMAT, "n": n, "keepalive": keepalive,
                                "files": files}))
    return BenchRepo(n, keepalive, root, gen.private_keys, tuple(files))
