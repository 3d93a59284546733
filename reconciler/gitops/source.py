"""Source stage: a bare mirror of the config repo, read from commit trees, never a working copy.

The mirror lives in the service's state directory. Fetching force-updates only the
remote-tracking ref; what the host runs is pinned by local refs (`refs/tunnelctl/*`), so a
force-pushed remote can never make the last applied commit disappear, and ancestry can always
be checked against it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import git

from reconciler.repo.state import SourceFile

PIN_PREFIX = "refs/tunnelctl/"
LISTINGS_KEPT = 2  # commits whose listing is kept: the head and the one before (16k entries each)
MAX_DIFF_FILES = 2048  # a bigger diff between two commits: list the new tree whole
YAML_SUFFIXES = (".yaml", ".yml")
# Never prompt for credentials or host keys: the service has no terminal. No global or system
# git config either: a hook, alias, url rewrite or credential helper set for root's own use
# must not change what the service fetches.
GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=10",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
}
# Every fetched object is checked (malformed trees, bad paths such as `..`, broken headers)
# before anything reads it.
MIRROR_CONFIG = {("transfer", "fsckObjects"): "true", ("fetch", "fsckObjects"): "true",
                 ("receive", "fsckObjects"): "true"}


class SourceError(RuntimeError):
    """Fetching or reading the repository failed (unreachable remote, unknown branch, ...)."""


class Ancestry(str, Enum):
    first = "first"  # nothing applied yet
    same = "same"
    forward = "forward"  # head descends from the applied commit
    rewind = "rewind"  # force-push / rewind: head does not descend from it


def classify(applied: str | None, head: str, is_ancestor: bool) -> Ancestry:
    """Pure decision used by the loop; `is_ancestor` = applied is an ancestor of head."""
    if applied is None:
        return Ancestry.first
    if applied == head:
        return Ancestry.same
    return Ancestry.forward if is_ancestor else Ancestry.rewind


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    subject: str
    author: str
    time: int  # committer time, unix seconds


class GitSource:
    """One remote branch mirrored into a local bare repository."""

    def __init__(self, url: str, branch: str, mirror_dir: Path, *, repo_path: str = "",
                 allowed_signers: Path | None = None, gnupg_home: Path | None = None,
                 fetch_timeout: float = 20.0, ssh_command: str | None = None) -> None:
        self.url = url
        self.branch = branch
        self.mirror_dir = Path(mirror_dir)
        self.repo_path = repo_path.strip("/")
        self.allowed_signers = allowed_signers
        self.gnupg_home = gnupg_home
        self.fetch_timeout = fetch_timeout
        self.env = {**GIT_ENV, **({"GIT_SSH_COMMAND": ssh_command} if ssh_command else {})}
        self._repo: git.Repo | None = None
        self._blobs: dict[str, bytes] = {}  # blob id -> content of recently read trees
        self._touched: set[str] = set()  # blob ids read since the last prune_blobs()
        self._listings: dict[str, dict[str, SourceFile]] = {}  # commit -> path -> file

    # -- repository ------------------------------------------------------------------------

    @property
    def repo(self) -> git.Repo:
        if self._repo is None:
            self._repo = self._open()
        return self._repo

    def _open(self) -> git.Repo:
        if (self.mirror_dir / "HEAD").exists():
            repo = git.Repo(self.mirror_dir)
        else:
            self.mirror_dir.parent.mkdir(parents=True, exist_ok=True)
            repo = git.Repo.init(self.mirror_dir, bare=True)
        repo.git.update_environment(**self.env)  # gitpython's own git calls too
        with repo.config_writer() as config:
            for (section, option), value in MIRROR_CONFIG.items():
                config.set_value(section, option, value)
        names = [r.name for r in repo.remotes]
        if "origin" not in names:
            repo.create_remote("origin", self.url)
        elif repo.remotes.origin.url != self.url:
            repo.remotes.origin.set_url(self.url)
        return repo

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
            self._repo = None

    def git(self, args: Sequence[str], *, env: Mapping[str, str] | None = None,
            timeout: float | None = None, check: bool = True) -> tuple[int, str, str]:
        """Run one git command in the mirror; returns (status, stdout, stderr)."""
        status, out, err = self.repo.git.execute(
            ["git", *args], with_extended_output=True, with_exceptions=False,
            env={**self.env, **(env or {})}, kill_after_timeout=timeout)
        out_s = out if isinstance(out, str) else (out or b"").decode(errors="replace")
        if check and status != 0:
            raise SourceError(_first_error_line(err) or f"git {args[0]} exited {status}")
        return status, out_s, err

    @property
    def tracking_ref(self) -> str:
        return f"refs/remotes/origin/{self.branch}"

    # -- fetch and refs ----------------------------------------------------------------------

    def fetch(self) -> str:
        """Fetch the branch; returns the remote head commit. Raises SourceError."""
        status, _, err = self.git(
            ["fetch", "--no-tags", "--quiet", "origin",
             f"+refs/heads/{self.branch}:{self.tracking_ref}"],
            timeout=self.fetch_timeout, check=False)
        if status != 0:
            msg = _first_error_line(err) or f"git fetch exited {status}"
            if status == -9 or "timed out" in err.lower():
                msg = f"fetch timed out after {self.fetch_timeout:g}s"
            raise SourceError(f"fetch {self.url} {self.branch}: {msg}")
        head = self.resolve(self.tracking_ref)
        if head is None:
            raise SourceError(f"fetch {self.url}: branch {self.branch!r} not found")
        return head

    def head(self) -> str | None:
        """The remote head as of the last successful fetch."""
        return self.resolve(self.tracking_ref)

    def resolve(self, ref: str) -> str | None:
        status, out, _ = self.git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                                  check=False)
        return out.strip() if status == 0 and out.strip() else None

    def resolve_blob(self, spec: str) -> str:
        """Blob id of `<commit>:<path>`."""
        _, out, _ = self.git(["rev-parse", "--verify", spec])
        return out.strip()

    def has_commit(self, sha: str) -> bool:
        return self.resolve(sha) == sha

    def is_ancestor(self, old: str, new: str) -> bool:
        status, _, _ = self.git(["merge-base", "--is-ancestor", old, new], check=False)
        return status == 0

    def ancestry(self, applied: str | None, head: str) -> Ancestry:
        if applied is not None and applied != head and not self.has_commit(applied):
            # The applied commit is gone from the mirror (state dir restored elsewhere?):
            # ancestry cannot be shown, so it is treated as a rewrite (fail closed).
            return Ancestry.rewind
        ancestor = applied is not None and applied != head and self.is_ancestor(applied, head)
        return classify(applied, head, ancestor)

    def commits_between(self, base: str, head: str) -> list[str]:
        """Commits reachable from `head` but not from `base`, oldest first (merges too)."""
        _, out, _ = self.git(["rev-list", "--reverse", f"{base}..{head}"])
        return out.split()

    def pin(self, name: str, sha: str | None) -> None:
        """Keep `sha` alive and findable as refs/tunnelctl/<name> (None removes the pin)."""
        if sha is None:
            self.git(["update-ref", "-d", PIN_PREFIX + name], check=False)
        else:
            self.git(["update-ref", PIN_PREFIX + name, sha])

    def pins(self) -> dict[str, str]:
        _, out, _ = self.git(["for-each-ref", "--format=%(refname) %(objectname)", PIN_PREFIX])
        pairs = (line.split(" ", 1) for line in out.splitlines() if line)
        return {ref[len(PIN_PREFIX):]: sha for ref, sha in pairs}

    def commit_info(self, sha: str) -> CommitInfo:
        _, out, _ = self.git(["show", "-s", "--format=%H%x00%s%x00%an <%ae>%x00%ct", sha])
        full, subject, author, ctime = out.strip().split("\0")
        return CommitInfo(full, subject, author, int(ctime))

    # -- signatures --------------------------------------------------------------------------

    def verify(self, sha: str) -> str | None:
        """None when the commit carries a good signature from a trusted key, else the reason.

        Trust comes only from the configured allowed-signers file / keyring: root's own
        ~/.gnupg or git config must not make a commit trusted by accident.
        """
        with tempfile.TemporaryDirectory(prefix="tunnelctl-gnupg-") as empty_home:
            signers = str(self.allowed_signers) if self.allowed_signers else os.devnull
            env = {"GNUPGHOME": str(self.gnupg_home) if self.gnupg_home else empty_home}
            if self.allowed_signers and not self.allowed_signers.exists():
                return f"allowed signers file {self.allowed_signers} does not exist"
            status, _, err = self.git(
                ["-c", f"gpg.ssh.allowedSignersFile={signers}", "-c", "gpg.minTrustLevel=undefined",
                 "verify-commit", sha], env=env, check=False, timeout=30)
        if status == 0:
            return None
        text = err.strip()
        if not text:
            return f"commit {sha[:12]} is not signed"
        if "no principal matched" in text.lower() or "no public key" in text.lower() \
                or "can't check signature" in text.lower():
            return f"commit {sha[:12]} is signed by an untrusted key"
        return f"commit {sha[:12]}: signature not trusted: {_first_error_line(text)}"

    # -- trees -------------------------------------------------------------------------------

    def files(self, sha: str, *, orgs: frozenset[str] | None = None) -> list[SourceFile]:
        """YAML files under repo_path at commit `sha`, as SourceFile with repo_path stripped.

        `orgs` restricts the result to those orgs' files (used to take a broken org's files
        from an older commit). Blob contents are read from git only when their id is new.
        A commit after one listed before is listed as that listing plus `git diff-tree`
        between the two (a one-file commit reads one line, not the 16k-entry tree), and an
        unchanged file is the very SourceFile object of the last listing (so a load can see
        it unchanged by identity).
        """
        listing = self._listing(sha)
        if orgs is None:
            result = list(listing.values())
        else:
            result = [f for f in listing.values() if org_of(f.path) in orgs]
        self._touched.update(f.blob_id for f in result if f.blob_id is not None)
        return result

    def _listing(self, sha: str) -> dict[str, SourceFile]:
        """path -> SourceFile of `sha`, in git's path order (kept for the last few commits)."""
        found = self._listings.pop(sha, None)
        if found is None:
            base = next(reversed(self._listings), None) if self._listings else None
            found = self._listing_from(base, sha) if base is not None else None
            if found is None:
                found = self._full_listing(sha)
        self._listings[sha] = found  # most recently used last
        while len(self._listings) > LISTINGS_KEPT:
            self._listings.pop(next(iter(self._listings)))
        return found

    def _full_listing(self, sha: str) -> dict[str, SourceFile]:
        args = ["ls-tree", "-r", "-z", "--full-tree", sha]
        if self.repo_path:
            args += ["--", self.repo_path]
        _, out, _ = self.git(args)
        result: dict[str, SourceFile] = {}
        for entry in out.split("\0"):
            if not entry:
                continue
            meta, _, path = entry.partition("\t")
            _mode, kind, blob_id = meta.split(" ")
            if kind != "blob":
                continue
            rel = self._relative(path)
            if rel is not None:
                result[rel] = SourceFile(rel, self._blob(blob_id), blob_id)
        return result

    def _listing_from(self, base: str, sha: str) -> dict[str, SourceFile] | None:
        """`sha`'s listing as `base`'s patched with `git diff-tree -r` base sha (renames as a
        delete and an add); None when the diff is large (a full listing is then cheaper)."""
        args = ["diff-tree", "-r", "-z", "--raw", "--no-renames", "--no-commit-id",
                base, sha]
        if self.repo_path:
            args += ["--", self.repo_path]
        try:
            _, out, _ = self.git(args)
        except SourceError:
            return None
        fields = out.split("\0")
        changes: list[tuple[str, str, str]] = []  # (status, path, new blob id)
        for i in range(0, len(fields) - 1, 2):
            meta, path = fields[i], fields[i + 1]
            # ":100644 100644 <old> <new> M": the new mode's object type decides
            parts = meta.lstrip(":").split(" ")
            if len(parts) != 5:
                return None
            new_mode, new_id, status = parts[1], parts[3], parts[4]
            if status != "D" and new_mode == "160000":
                status = "D"  # a submodule now: not a blob, as ls-tree's listing skips it
            changes.append((status[0], path, new_id))
        if len(changes) > MAX_DIFF_FILES:
            return None
        old = self._listings[base]
        result = dict(old)
        reorder = False
        for status, path, blob_id in changes:
            rel = self._relative(path)
            if rel is None:
                continue
            if status == "D":
                reorder |= result.pop(rel, None) is not None
            else:
                reorder |= rel not in result
                result[rel] = SourceFile(rel, self._blob(blob_id), blob_id)
        if reorder:  # git lists a tree recursively in byte order of the full paths
            result = {k: result[k] for k in sorted(result, key=lambda p: p.encode())}
        return result

    def _relative(self, path: str) -> str | None:
        """The repo-relative path of a YAML file under repo_path, else None."""
        if not path.endswith(YAML_SUFFIXES):
            return None
        # git prints normalised paths ("a/b.yaml", no "." or "//"), so string slicing gives
        # what PurePosixPath.relative_to would, at a fraction of the cost on 16k files.
        if self.repo_path:
            prefix = self.repo_path + "/"
            return path[len(prefix):] if path.startswith(prefix) else None
        return path

    def _blob(self, blob_id: str) -> bytes:
        data = self._blobs.get(blob_id)
        if data is None:
            data = bytes(self.repo.odb.stream(bytes.fromhex(blob_id)).read())
            self._blobs[blob_id] = data
        return data

    def prune_blobs(self) -> None:
        """Forget contents not read since the last prune (bounds memory to the recent trees);
        a cycle that read no tree keeps everything."""
        if self._touched:
            self._blobs = {k: v for k, v in self._blobs.items() if k in self._touched}
            self._touched = set()


# Folders at the config root that are not orgs.
NON_ORG_DIRS = frozenset({"gateways", "schemas", "templates", ".github"})


def org_of(path: str) -> str | None:
    """The org a repo-relative file belongs to (tenants/<org>/<f> or <org>/<f>), else None."""
    parts = [p for p in path.split("/") if p]  # what PurePosixPath(path).parts gives
    if len(parts) == 3 and parts[0] == "tenants":
        return parts[1]
    if len(parts) == 2 and parts[0] not in NON_ORG_DIRS and parts[0] != "tenants":
        return parts[0]
    return None


def _first_error_line(text: str) -> str:
    for line in text.strip().splitlines():
        line = line.strip()
        if line.startswith(("fatal:", "error:")):
            return line.split(":", 1)[1].strip()
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""
