"""Renderers for a RepoDiff: terminal text, JSON (machines), markdown (the pull-request comment).

Pure functions of the diff, deterministic (sorted orgs and tunnels) so golden files can pin them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from reconciler.gitops.prplan import FieldChange, GatewayChange, RepoDiff, TunnelChange, TunnelView

SYMBOL = {"add": "+", "remove": "-", "change": "~"}
# Tunnel fields shown as columns in the markdown tables; others go to the "Other changes" column.
COLUMNS = ("subnet", "address", "lans", "services", "status")


def _field_line(f: FieldChange) -> str:
    if f.field == "psk_rotation":
        return f"psk_rotation: {f.old} -> {f.new} (preshared key rotates; it is never shown)"
    return f"{f.field}: {f.old} -> {f.new}"


def _brief(v: TunnelView) -> str:
    return (f"{v.subnet}  address {v.address}  lans {v.value('lans')}  "
            f"services {v.value('services')}  status {v.status}{_brief6(v)}")


def _brief6(v: TunnelView) -> str:
    """The IPv6 facts of a tunnel that has any ("" for IPv4-only ones: plans of IPv4 repos
    read as they always did)."""
    if not v.has_ipv6:
        return ""
    address = f"  address6 {v.address6}" if v.address6 else ""
    return f"  subnet6 {v.value('subnet6')}{address}  lans6 {v.value('lans6')}"


# ---- text --------------------------------------------------------------------------------------


def render_text(diff: RepoDiff) -> str:
    lines = [(f"tunnelctl plan: {diff.base.name} ({diff.base.short}) -> "
             f"{diff.head.name} ({diff.head.short})"), ""]
    for g in diff.gateway_changes:
        lines.append(f"Gateway {g.name}")
        if g.action != "change":
            lines.append(f"  {SYMBOL[g.action]} gateway {g.name}")
        lines.extend(f"  ~ {_field_line(f)}" for f in g.fields)
        lines.append("")
    for org in diff.orgs:
        lines.append(f"Org {org}")
        for c in diff.for_org(org):
            if c.action == "change":
                lines.append(f"  ~ {c.ident}  {c.view.subnet}")
                lines.extend(f"      {_field_line(f)}" for f in c.fields)
            else:
                lines.append(f"  {SYMBOL[c.action]} {c.ident}  {_brief(c.view)}")
        lines.append("")
    if diff.unevaluated_orgs:
        lines.append("Not evaluated (these orgs do not load at head): "
                     + ", ".join(diff.unevaluated_orgs))
        lines.append("")
    if diff.warnings:
        lines.append("Warnings:")
        lines.extend(f"  ! {w.subject}: {w.message}" for w in diff.warnings)
        lines.append("")
    if diff.problems:
        lines.append("Validation problems at head (this change cannot be applied):")
        lines.extend(f"  x {p}" for p in diff.problems)
        lines.append("")
    if not diff.ok:
        # Never a tunnel count or "to remove" for a head that does not load: nothing applies.
        lines.append(f"Invalid, not applied: {diff.head.name} does not validate; hosts keep "
                     f"{diff.base.name} ({diff.base_tunnels} tunnels).")
    elif diff.has_changes:
        lines.append(f"Plan: {diff.summary()}.")
    else:
        lines.append(f"No changes: the desired state is identical ({diff.head_tunnels} tunnels).")
    return "\n".join(lines) + "\n"


# ---- json --------------------------------------------------------------------------------------


def _view_json(v: TunnelView | None) -> dict[str, Any] | None:
    if v is None:
        return None
    data: dict[str, Any] = {
        "subnet": v.subnet, "address": v.address, "gateway": v.gateway, "lans": list(v.lans),
        "services": list(v.services), "status": v.status, "public_key": v.public_key,
        "persistent_keepalive": v.persistent_keepalive, "psk_rotation": v.psk_rotation,
        "revoked_at": v.revoked_at or None, "notes": v.notes}
    if v.has_ipv6:  # only tunnels with IPv6 carry the keys (IPv4 plans stay as they were)
        data.update(subnet6=v.subnet6 or None, address6=v.address6 or None, lans6=list(v.lans6))
    return data


def _change_json(c: TunnelChange) -> dict[str, Any]:
    return {"action": c.action, "tunnel": c.ident, "before": _view_json(c.before),
            "after": _view_json(c.after),
            "fields": [{"field": f.field, "old": f.old, "new": f.new} for f in c.fields]}


def _gateway_json(g: GatewayChange) -> dict[str, Any]:
    return {"action": g.action, "gateway": g.name,
            "fields": [{"field": f.field, "old": f.old, "new": f.new} for f in g.fields]}


def to_json_data(diff: RepoDiff) -> dict[str, Any]:
    return {
        "base": {"ref": diff.base.name, "commit": diff.base.commit},
        "head": {"ref": diff.head.name, "commit": diff.head.commit},
        "valid": diff.ok,
        "has_changes": diff.has_changes,
        "summary": {"add": diff.count("add"), "change": diff.count("change"),
                    "remove": diff.count("remove"), "gateway_changes": len(diff.gateway_changes),
                    "base_tunnels": diff.base_tunnels, "head_tunnels": diff.head_tunnels},
        "orgs": {org: [_change_json(c) for c in diff.for_org(org)] for org in diff.orgs},
        "gateways": [_gateway_json(g) for g in diff.gateway_changes],
        "warnings": [{"subject": w.subject, "kind": w.kind, "message": w.message}
                     for w in diff.warnings],
        "problems": list(diff.problems),
        "unevaluated_orgs": list(diff.unevaluated_orgs),
    }


def render_json(diff: RepoDiff) -> str:
    return json.dumps(to_json_data(diff), indent=2) + "\n"


# ---- markdown ----------------------------------------------------------------------------------


# What can start HTML, a link, code or strike-through, or break a table. `_` stays: GitHub does
# not emphasise inside words, and field names like psk_rotation must read as they are.
_MD_SPECIAL = set("\\`*[]<>|~")
_MD_ENTITIES = {"&": "&amp;", "@": "&#64;", "\n": " ", "\r": " "}  # @: no mentions from a file


def _md(text: str) -> str:
    """Escape a value from a repo file for GitHub markdown (a table cell, a list item): it can
    neither add markup, HTML, links or mentions nor break the table."""
    return "".join(_MD_ENTITIES.get(ch) or (f"\\{ch}" if ch in _MD_SPECIAL else ch)
                   for ch in text)


def _code(text: str) -> str:
    """A value for inside a `code span`, where backslash escapes do not apply."""
    return text.replace("`", "'").replace("\n", " ").replace("\r", " ")


def _cell(c: TunnelChange, name: str) -> str:
    changed = next((f for f in c.fields if f.field == name), None)
    if changed is not None:
        return f"~~{_md(changed.old)}~~ → **{_md(changed.new)}**"
    return _md(c.view.value(name))


def _org_table(diff: RepoDiff, org: str) -> list[str]:
    lines = ["| | Tunnel | Subnet | Address | LANs | Services | Status | Other changes |",
             "|:-:|:--|:--|:--|:--|:--|:--|:--|"]
    for c in diff.for_org(org):
        other = "<br>".join(_md(_field_line(f)) for f in c.fields if f.field not in COLUMNS)
        if c.action != "change" and c.view.has_ipv6:
            other = _md(_brief6(c.view).strip().replace("  ", ", "))
        if c.action == "add" and c.view.notes:
            other = "<br>".join(x for x in (other, f"notes: {_md(c.view.notes)}") if x)
        cells = " | ".join(_cell(c, n) for n in COLUMNS)
        lines.append(f"| `{SYMBOL[c.action]}` | `{c.view.name}` | {cells} | {other or ''} |")
    return lines


# GitHub refuses an issue comment over 65,536 characters; keep a margin for the sticky marker.
COMMENT_LIMIT = 60_000
LIST_LIMIT = 30  # problems and warnings shown before "and N more"


def _capped(items: list[str], what: str) -> list[str]:
    if len(items) <= LIST_LIMIT:
        return items
    return [*items[:LIST_LIMIT], f"> - … and {len(items) - LIST_LIMIT} more {what}"]


def render_markdown(diff: RepoDiff, limit: int = COMMENT_LIMIT) -> str:
    """The pull-request comment: what matters most first (validity, risky changes, the per-org
    summary, gateway changes), then each org's tunnels folded; orgs that do not fit under
    `limit` characters are named, not shown."""
    if not diff.ok:
        title = "validation failed: invalid, not applied"
    elif diff.has_changes:
        title = diff.summary()
    else:
        title = "no changes"
    lines = [f"### tunnelctl plan: {title}", ""]
    if diff.ok:
        lines += [(f"Desired state of `{_code(diff.head.name)}` (`{diff.head.short}`) against "
                   f"`{_code(diff.base.name)}` (`{diff.base.short}`): "
                   f"{diff.base_tunnels} → {diff.head_tunnels} tunnels."), ""]
    else:
        lines += [(f"`{_code(diff.head.name)}` (`{diff.head.short}`) does not validate, so hosts "
                   f"keep `{_code(diff.base.name)}` (`{diff.base.short}`, {diff.base_tunnels} "
                   "tunnels). Nothing below is applied until it is fixed."), ""]
    if diff.problems:
        lines += ["> [!CAUTION]", "> **Validation failed at head**: this change cannot be applied.",
                  *_capped([f"> - `{_code(p)}`" for p in diff.problems], "problems"), ""]
    if diff.warnings:
        lines += ["> [!WARNING]", f"> **{len(diff.warnings)} risky change(s)**",
                  *_capped([f"> - **{_md(w.subject)}**: {_md(w.message)}" for w in diff.warnings],
                           "warnings"), ""]
    for g in diff.gateway_changes:
        lines += [f"#### Gateway `{g.name}`", ""]
        if g.action != "change":
            lines += [f"Gateway file {'added' if g.action == 'add' else 'removed'}.", ""]
        else:
            lines += ["| Field | Before | After |", "|:--|:--|:--|",
                      *(f"| {f.field} | {_md(f.old)} | {_md(f.new)} |" for f in g.fields), ""]
    if diff.orgs:
        lines += ["| Org | Added | Changed | Removed |", "|:--|--:|--:|--:|"]
        for org in diff.orgs:
            changes = diff.for_org(org)
            counts = [sum(1 for c in changes if c.action == a) for a in ("add", "change", "remove")]
            lines.append(f"| {_md(org)} | {counts[0]} | {counts[1]} | {counts[2]} |")
        lines.append(f"| **total** | **{diff.count('add')}** | **{diff.count('change')}** | "
                     f"**{diff.count('remove')}** |")
        lines.append("")
    footer = ["<sub>Preshared keys never appear here: they are derived on each host.</sub>"]
    if diff.unevaluated_orgs:
        footer.insert(0, "Not evaluated (do not load at head): "
                      + ", ".join(f"`{_code(o)}`" for o in diff.unevaluated_orgs) + "\n")
    used = sum(len(line) + 1 for line in lines + footer)
    left_out: list[str] = []
    for org in diff.orgs:
        summary = f"<b>{_md(org)}</b>: {len(diff.for_org(org))} tunnel(s)"
        block = [f"<details><summary>{summary}</summary>", "", *_org_table(diff, org), "",
                 "</details>", ""]
        size = sum(len(line) + 1 for line in block)
        if left_out or used + size > limit - 400:  # room for the note below
            left_out.append(org)
            continue
        lines += block
        used += size
    if left_out:
        lines += ["> [!NOTE]",
                  (f"> Details of {len(left_out)} org(s) left out to stay under GitHub's comment "
                   "limit (they are counted in the table above); run "
                   "`tunnelctl plan --base … --head …` to see everything."), ""]
    return "\n".join(lines + footer) + "\n"


RENDERERS: dict[str, Callable[[RepoDiff], str]] = {
    "text": render_text,
    "json": render_json,
    "markdown": render_markdown,
}
