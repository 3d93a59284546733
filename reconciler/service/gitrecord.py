"""What the service keeps in git besides the commits it reads: the pins that keep the
applied and held commits in the mirror, and the push of the audit branch."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from reconciler.gitops.audit import AuditLog
from reconciler.gitops.source import GitSource, SourceError
from reconciler.service.logs import event
from reconciler.service.state import ServiceState

log = logging.getLogger("tunnelctl.service")


def pin_applied(source: GitSource, commit: str, held: Mapping[str, str | None]) -> None:
    """Pin the applied commit and each held org's base; drop the pins of orgs held no more."""
    source.pin("applied", commit)
    wanted = {f"held/{org}": base for org, base in held.items() if base}
    for name in source.pins():
        if name.startswith("held/") and name not in wanted:
            source.pin(name, None)
    for name, base in wanted.items():
        source.pin(name, base)


def push_audit(audit: AuditLog, st: ServiceState) -> None:
    """Push the audit entries not on the remote yet; record what is pending in `st`."""
    try:
        pending = audit.pending()
        if pending == 0:
            st.audit_pending, st.audit_error = 0, None
            return
        if st.fetch_error:
            # The remote just failed a fetch: do not spend another timeout on a push.
            st.audit_pending = pending
            st.audit_error = "push deferred: remote unreachable"
            return
        res = audit.push()
    except SourceError as exc:
        st.audit_error = str(exc)
        return
    st.audit_pending, st.audit_error = res.pending, res.error
    if res.error:
        event(log, "audit_push_failed", logging.WARNING, pending=res.pending, error=res.error)
    elif res.pushed:
        event(log, "audit_pushed", entries=res.pushed, replayed=res.replayed or None)
