"""Audit trail: one git commit per cycle that changed the host or refused a commit.

Entries go to branch `audit/<gateway>` of the config remote (never the branch ops edit), one
JSONL file per day, the entry also in the commit message body. Commits are built inside the
bare mirror with a throw-away index (read-tree / update-index / write-tree / commit-tree /
update-ref), so no working copy exists. Pushing never forces: a rejected push fetches the
remote branch, replays the local-only entries on top of it and tries again. Entries that
cannot be pushed stay committed locally and go out with the next successful push.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from reconciler.gitops.source import GitSource, SourceError

MAX_REASON = 2000
PUSH_ATTEMPTS = 5
# Audit commits are part of the apply transaction: their objects and ref reach the disk before
# the intent they complete is removed (git >= 2.36; older versions ignore the keys).
_DURABLE = ["-c", "core.fsync=committed", "-c", "core.fsyncMethod=fsync"]
_REJECTED = ("non-fast-forward", "fetch first", "[rejected]", "rejected", "stale info")


@dataclass(frozen=True)
class AuditEntry:
    """What happened in one cycle. Counts and commit ids only: never a key or a PSK."""

    time: str  # ISO 8601 UTC
    host: str
    gateway: str
    result: str  # applied | repaired | refused | failed
    commit: str | None  # the commit applied or refused
    applied_commit: str | None  # what the host enforces after this cycle
    reason: str = ""
    summary: Mapping[str, int] = field(default_factory=dict)
    held_orgs: Mapping[str, str] = field(default_factory=dict)  # org -> commit it is held at
    intent: str = ""  # id of the intent record this entry completes (applies only)
    resumed: bool = False  # the apply was finished (or closed) after a restart

    @staticmethod
    def now() -> str:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def to_json(self) -> str:
        data = asdict(self)
        data["reason"] = self.reason[:MAX_REASON]
        data["summary"] = dict(self.summary)
        data["held_orgs"] = dict(self.held_orgs)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> AuditEntry:
        data = json.loads(text)
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})

    @property
    def day_path(self) -> str:
        day = self.time[:10]
        return f"{day[:4]}/{day[5:7]}/{day}.jsonl"

    def subject(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.summary.items()) if v)
        sha = (self.commit or "none")[:12]
        after = " [finished after a restart]" if self.resumed else ""
        return (f"{self.gateway}@{self.host}: {self.result} {sha}"
                + (f" ({counts})" if counts else "") + after)


@dataclass(frozen=True)
class PushResult:
    pushed: int  # entries that reached the remote by this call
    pending: int  # entries still only local
    error: str | None = None
    replayed: bool = False  # had to rebuild on top of someone else's entries


INTENT_SCAN = 1000  # recent entries has_intent reads


class AuditLog:
    def __init__(self, source: GitSource, gateway: str, host: str, *,
                 push_timeout: float = 20.0) -> None:
        self.source = source
        self.gateway = gateway
        self.host = host
        self.push_timeout = push_timeout
        self.branch = f"audit/{gateway}"
        self.local_ref = f"refs/heads/{self.branch}"
        self.remote_ref = f"refs/remotes/origin/{self.branch}"

    # -- local commits ---------------------------------------------------------------------

    def append(self, entry: AuditEntry) -> str:
        """Commit `entry` on the local audit branch; returns the new commit id."""
        parent = self.source.resolve(self.local_ref)
        sha = self._commit_on(parent, entry)
        self.source.git([*_DURABLE, "update-ref", self.local_ref, sha, parent or ""])
        return sha

    def has_intent(self, intent_id: str) -> bool:
        """Is an entry completing this intent on the local branch (pushed or not)?"""
        if not intent_id or self.source.resolve(self.local_ref) is None:
            return False
        needle = json.dumps({"intent": intent_id}, separators=(",", ":"))[1:-1]
        # Not `git log --grep`: git matches even -F patterns with PCRE2's JIT, which the
        # unit's MemoryDenyWriteExecute forbids, so the resume after a crash died there. An
        # open intent's entry, when written, is among the branch's last ones (one intent is
        # open at a time), so a bounded scan of recent messages is exact.
        _, out, _ = self.source.git(["log", "--format=%B%x00", "-n", str(INTENT_SCAN),
                                     self.local_ref])
        return any(needle in message for message in out.split("\0"))

    def _commit_on(self, parent: str | None, entry: AuditEntry) -> str:
        path = entry.day_path
        line = entry.to_json() + "\n"
        old = b""
        if parent is not None:
            status, _, _ = self.source.git(["cat-file", "-e", f"{parent}:{path}"], check=False)
            if status == 0:
                blob = self.source.resolve_blob(f"{parent}:{path}")
                old = self.source.repo.odb.stream(bytes.fromhex(blob)).read()
        fd, index = tempfile.mkstemp(prefix="audit-index.", dir=self.source.mirror_dir)
        os.close(fd)
        os.unlink(index)  # git wants to create the index itself
        env = {"GIT_INDEX_FILE": index, **self._identity(entry)}
        try:
            with open(index + ".blob", "wb") as fh:
                fh.write(old + line.encode())
            _, blob, _ = self.source.git([*_DURABLE, "hash-object", "-w", "--", index + ".blob"])
            blob_id = blob.strip()
            self.source.git(["read-tree", parent] if parent else ["read-tree", "--empty"], env=env)
            self.source.git(["update-index", "--add", "--cacheinfo",
                             f"100644,{blob_id},{path}"], env=env)
            _, tree, _ = self.source.git([*_DURABLE, "write-tree"], env=env)
            args = [*_DURABLE, "commit-tree", tree.strip(), "-m", entry.subject(),
                    "-m", entry.to_json()]
            if parent:
                args[len(_DURABLE) + 2:len(_DURABLE) + 2] = ["-p", parent]
            _, sha, _ = self.source.git(args, env=env)
        finally:
            for leftover in (index, index + ".lock", index + ".blob"):
                if os.path.exists(leftover):
                    os.unlink(leftover)
        return sha.strip()

    def _identity(self, entry: AuditEntry) -> dict[str, str]:
        name, email = f"tunnelctl on {self.host}", f"tunnelctl@{self.host}"
        date = entry.time.replace("Z", "+00:00")
        return {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_AUTHOR_DATE": date,
                "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email,
                "GIT_COMMITTER_DATE": date}

    def entries(self, ref: str | None = None) -> list[AuditEntry]:
        """Entries on `ref` (default the local branch), oldest first, from commit messages."""
        tip = self.source.resolve(ref or self.local_ref)
        if tip is None:
            return []
        return self._entries_in(tip)

    def _entries_in(self, rev_range: str) -> list[AuditEntry]:
        _, out, _ = self.source.git(["log", "--reverse", "--format=%B%x00", rev_range])
        result = []
        for message in out.split("\0"):
            body = [p for p in message.strip().split("\n\n") if p.strip().startswith("{")]
            if body:
                result.append(AuditEntry.from_json(body[-1].strip()))
        return result

    def pending(self) -> int:
        local = self.source.resolve(self.local_ref)
        if local is None:
            return 0
        remote = self.source.resolve(self.remote_ref)
        rng = f"{remote}..{local}" if remote else local
        _, out, _ = self.source.git(["rev-list", "--count", rng])
        return int(out.strip() or 0)

    # -- push ------------------------------------------------------------------------------

    def push(self) -> PushResult:
        """Push the local audit branch without force; replay on top of the remote if needed."""
        start_pending = self.pending()
        if start_pending == 0:
            return PushResult(0, 0)
        replayed = False
        error: str | None = None
        for _ in range(PUSH_ATTEMPTS):
            local = self.source.resolve(self.local_ref)
            assert local is not None
            status, _, err = self.source.git(
                ["push", "origin", f"{self.local_ref}:{self.local_ref}"],
                timeout=self.push_timeout, check=False)
            if status == 0:
                self.source.git(["update-ref", self.remote_ref, local])
                return PushResult(start_pending, 0, None, replayed)
            error = _push_error(err, status)
            if not any(word in err for word in _REJECTED):
                break  # unreachable or refused for another reason: keep entries local
            try:
                self._fetch_remote_branch()
                self._replay()
                replayed = True
            except SourceError as exc:
                error = str(exc)
                break
        left = self.pending()
        return PushResult(start_pending - left if left < start_pending else 0, left, error, replayed)

    def _fetch_remote_branch(self) -> None:
        self.source.git(["fetch", "--no-tags", "--quiet", "origin",
                         f"+{self.local_ref}:{self.remote_ref}"], timeout=self.push_timeout)

    def _replay(self) -> None:
        """Rebuild the local-only entries on top of the remote branch (a rebase without a tree)."""
        local = self.source.resolve(self.local_ref)
        remote = self.source.resolve(self.remote_ref)
        if local is None or remote is None:
            return
        mine = self._entries_in(f"{remote}..{local}")
        tip: str = remote
        for entry in mine:
            tip = self._commit_on(tip, entry)
        self.source.git(["update-ref", self.local_ref, tip, local])


def _push_error(stderr: str, status: int) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for line in lines:
        if line.startswith(("fatal:", "error:")):
            return "push: " + line.split(":", 1)[1].strip()
    return "push: " + (lines[-1] if lines else f"git push exited {status}")
