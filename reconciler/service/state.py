"""What the service remembers between cycles and restarts, and the status it reports.

`state.json` in the state directory is the record of what the host enforces: the applied
commit, the orgs held back at an older commit because their files are broken at the applied
one, the last attempt, failures under back-off and a short history. It is replaced atomically
(temp file + fsync + rename), so a kill -9 at any point leaves the old or the new record.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from reconciler.engine.files import atomic_write

STATE_FILE = "state.json"
INTENT_FILE = "intent.json"
SUSPEND_FILE = "suspended"
APPROVAL_FILE = "approved-removal"
HISTORY = 20
MAX_FAILURES = 10

Phase = Literal["Starting", "Reconciling", "Ready", "Degraded", "Stalled", "Suspended"]


class Revision(BaseModel):
    commit: str
    at: float  # unix seconds
    subject: str = ""


class Attempt(BaseModel):
    commit: str | None
    at: float
    result: str  # applied | repaired | noop | refused | failed | suspended | busy
    reason: str = ""


class Failure(BaseModel):
    """A commit that was refused or failed; evaluated again only after `retry_at`."""

    commit: str
    result: str
    reason: str
    attempts: int = 1
    retry_at: float = 0.0


class HistoryItem(BaseModel):
    time: float  # when the cycle ended
    started: float = 0.0
    result: str
    commit: str | None
    reason: str = ""
    duration: float = 0.0
    summary: dict[str, int] = Field(default_factory=dict)


class Intent(BaseModel):
    """The commit a cycle is about to apply and its full plan, written before the first host
    write. Its audit entry is derived from it, so a kill anywhere between the intent and the
    entry cannot lose the entry or shrink its plan to what was left after the kill."""

    id: str  # also in the audit entry: finds an entry already written for this intent
    commit: str
    previous: str | None  # the applied commit when the intent was made
    gateway: str
    host: str
    at: float
    summary: dict[str, int] = Field(default_factory=dict)  # counts only, never a key
    held_orgs: dict[str, str | None] = Field(default_factory=dict)
    reason: str = ""  # why orgs are held (the audit entry's reason)


class ServiceState(BaseModel):
    version: int = 1
    gateway: str | None = None
    applied: Revision | None = None
    # org -> commit its files are taken from (None: the org is left out, it was never good).
    held_orgs: dict[str, str | None] = Field(default_factory=dict)
    held_reason: str = ""  # why those orgs are held (their problems at the applied commit)
    attempted: Attempt | None = None
    failures: dict[str, Failure] = Field(default_factory=dict)
    history: list[HistoryItem] = Field(default_factory=list)
    # Runtime facts for `status` (refreshed every cycle).
    phase: Phase = "Starting"
    message: str = ""
    remote_head: str | None = None
    fetch_error: str | None = None
    last_error: str | None = None
    audit_pending: int = 0
    audit_error: str | None = None
    pid: int | None = None
    updated_at: float = 0.0
    metrics_address: str | None = None

    def record(self, item: HistoryItem) -> None:
        self.history = [*self.history, item][-HISTORY:]

    def fail(self, commit: str, result: str, reason: str, *, base: float, cap: float,
             now: float) -> Failure:
        """Remember a refused/failed commit with exponential back-off (base, 2*base, ... cap)."""
        old = self.failures.get(commit)
        attempts = (old.attempts + 1) if old else 1
        delay = min(cap, base * (2 ** (attempts - 1)))
        failure = Failure(commit=commit, result=result, reason=reason, attempts=attempts,
                          retry_at=now + delay)
        failures = {k: v for k, v in self.failures.items() if k != commit}
        failures[commit] = failure
        # Bounded: only the most recent few commits are remembered.
        self.failures = dict(list(failures.items())[-MAX_FAILURES:])
        return failure


class StateStore:
    """state.json plus the small flag files `suspend` and removal approvals use."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / STATE_FILE

    def load(self) -> ServiceState:
        """The saved state; a missing file is a first start. A corrupt one raises ValueError."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return ServiceState()
        try:
            return ServiceState.model_validate_json(text)
        except ValidationError as exc:
            raise ValueError(f"{self.path}: unreadable service state: {exc.errors()[0]['msg']}") from None

    def save(self, state: ServiceState) -> None:
        state.updated_at = time.time()
        atomic_write(self.path, state.model_dump_json(indent=1))

    # -- the intent of the apply in progress ------------------------------------------------

    @property
    def intent_path(self) -> Path:
        return self.dir / INTENT_FILE

    def save_intent(self, intent: Intent) -> None:
        atomic_write(self.intent_path, intent.model_dump_json(indent=1))

    def load_intent(self) -> Intent | None:
        """The pending intent; an unreadable one is dropped (raises ValueError to say so)."""
        try:
            text = self.intent_path.read_text()
        except FileNotFoundError:
            return None
        try:
            return Intent.model_validate_json(text)
        except ValidationError as exc:
            raise ValueError(f"{self.intent_path}: unreadable intent: "
                             f"{exc.errors()[0]['msg']}") from None

    def clear_intent(self) -> None:
        try:
            self.intent_path.unlink()
        except FileNotFoundError:
            return
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)  # the removal survives a power cut, like the write did
        finally:
            os.close(fd)

    # -- suspend / resume -----------------------------------------------------------------

    @property
    def suspend_path(self) -> Path:
        return self.dir / SUSPEND_FILE

    def suspended(self) -> dict[str, object] | None:
        try:
            data = json.loads(self.suspend_path.read_text() or "{}")
        except FileNotFoundError:
            return None
        except ValueError:
            data = {}
        return data if isinstance(data, dict) else {}

    def suspend(self, reason: str, by: str) -> None:
        atomic_write(self.suspend_path, json.dumps(
            {"reason": reason, "by": by, "since": time.time()}))

    def resume(self) -> bool:
        try:
            self.suspend_path.unlink()
            return True
        except FileNotFoundError:
            return False

    # -- one-shot approval of a large removal ---------------------------------------------

    @property
    def approval_path(self) -> Path:
        return self.dir / APPROVAL_FILE

    def approve_removal(self, commit: str) -> None:
        atomic_write(self.approval_path, json.dumps({"commit": commit, "at": time.time()}))

    def removal_approved(self, commit: str) -> bool:
        try:
            data = json.loads(self.approval_path.read_text())
        except (FileNotFoundError, ValueError):
            return False
        return isinstance(data, dict) and data.get("commit") == commit

    def clear_approval(self) -> None:
        self.approval_path.unlink(missing_ok=True)
