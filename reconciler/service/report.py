"""What a service cycle reports: its CycleReports, the plan's counts, the Flux-style phase
and the metrics a finished cycle sets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from reconciler.engine.cycle import ReconcileResult
from reconciler.engine.plan import Plan
from reconciler.service.metrics import Revisions, ServiceMetrics
from reconciler.service.state import Phase, ServiceState


@dataclass(frozen=True)
class CycleReport:
    result: str  # applied | repaired | noop | refused | failed | suspended | busy
    commit: str | None
    reason: str = ""
    duration: float = 0.0
    summary: dict[str, int] = field(default_factory=dict)
    changed: bool = False


def flat_summary(result: ReconcileResult | None) -> dict[str, int]:
    """{"peers_add": 2, "routes_remove": 1, ...}: counts only, non-zero only."""
    return {} if result is None else plan_summary(result.plan)


def plan_summary(plan: Plan) -> dict[str, int]:
    out: dict[str, int] = {}
    for kind, counts in plan.summary().items():
        if kind == "total":
            continue
        for action, n in counts.items():
            if n:
                out[f"{kind}_{action}"] = n
    return out


def cycle_phase(st: ServiceState, *, suspended: bool, enforcing: bool, applied: str | None,
                head: str | None, failed: bool) -> tuple[Phase, str]:
    """Flux-style status word and the sentence behind it. `enforcing`: a last good state
    is loaded (the controller's `enforced`)."""
    short = applied[:12] if applied else "nothing"
    if suspended:
        return "Suspended", f"applying is suspended; enforcing {short} when resumed"
    if st.fetch_error:
        return "Stalled", f"{st.fetch_error}; enforcing {short}"
    if not enforcing:
        return "Stalled", st.last_error or "nothing applied yet"
    if head is not None and head != applied:
        return "Stalled", f"head {head[:12]} not applied: {st.last_error}; enforcing {short}"
    if failed:
        return "Stalled", f"{st.last_error or 'last cycle failed'}; applied {short}"
    if st.held_orgs:
        return "Degraded", f"applied {short}; {st.held_reason}"
    return "Ready", f"applied {short}"


def publish_cycle(metrics: ServiceMetrics, st: ServiceState, main: CycleReport,
                  duration: float, *, head: str | None, applied: str | None,
                  tunnel_counts: Callable[[], dict[str, int]]) -> None:
    """The gauges and counters of a finished cycle (`main` is its first report)."""
    metrics.observe_cycle(main.result, duration)
    metrics.suspended.set(1 if st.phase == "Suspended" else 0)
    metrics.ready.set(1 if st.phase == "Ready" else 0)
    metrics.set_phase(st.phase)
    metrics.audit_pending.set(st.audit_pending)
    att = st.attempted
    metrics.set_revisions(Revisions(
        applied=applied,
        applied_at=st.applied.at if st.applied else 0.0,
        attempted=att.commit if att else None, attempted_result=att.result if att else "",
        remote_head=head))
    metrics.set_tunnel_counts(tunnel_counts())
