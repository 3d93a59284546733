"""Desired-state diff between two commits of the config repository, for pull requests.

Reads both trees straight from git objects (gitpython): no root, no host, no checkout. Each
commit's files go through the same loader the reconciler uses (`repo.load_files`), sharing one
parse cache so files unchanged between base and head are parsed once. The result is a typed
`RepoDiff` (tunnels added/removed/changed with field-level changes, gateway changes, warnings for
risky changes, validation problems at head), rendered by `reconciler.gitops.prplan_render` (which imports this module, never the reverse).

Preshared keys never appear: only the rotation counter does (keys are derived on the host).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path, PurePosixPath

import git

from reconciler.repo.model import Gateway, Tunnel, TunnelStatus
from reconciler.repo.state import ParseCache, RepoState, SourceFile, load_files

# Above either bound, the removals in one change are flagged as "many".
MANY_REMOVALS_COUNT = 10
MANY_REMOVALS_SHARE = 0.25

TUNNEL_FIELDS = ("gateway", "subnet", "lans", "subnet6", "lans6", "services", "status",
                 "public_key",
                 "persistent_keepalive", "cloud_keepalive", "psk_rotation", "revoked_at",
                 "notes")
GATEWAY_FIELDS = ("interface", "listen_port", "address", "pool", "allocation_prefix", "reserved",
                  "infra_interfaces", "endpoint", "public_key", "mtu", "services",
                  "default_services", "routed_ranges", "amneziawg", "address6", "pool6",
                  "allocation_prefix6", "reserved6", "routed_ranges6")
# Gateway fields every customer router copies: changing one breaks every tunnel until reconfigured.
CUSTOMER_FACING_GATEWAY_FIELDS = ("address", "endpoint", "public_key", "listen_port", "mtu",
                                  "amneziawg")


class PlanInputError(Exception):
    """A ref or path cannot be read; the message says which and why."""


@dataclass(frozen=True)
class TunnelView:
    """The reviewable facts of one tunnel at one commit (effective services resolved)."""

    org: str
    name: str
    gateway: str
    subnet: str
    address: str  # the customer's tunnel address
    lans: tuple[str, ...]
    services: tuple[str, ...]
    status: str
    public_key: str
    persistent_keepalive: int
    psk_rotation: int
    revoked_at: str
    notes: str
    cloud_keepalive: int = 0
    subnet6: str = ""  # "" when the tunnel is IPv4 only
    address6: str = ""  # the customer's IPv6 tunnel address
    lans6: tuple[str, ...] = ()

    @property
    def has_ipv6(self) -> bool:
        return bool(self.subnet6 or self.lans6)

    @property
    def ident(self) -> str:
        return f"{self.org}/{self.name}"

    def value(self, name: str) -> str:
        raw = getattr(self, name)
        if isinstance(raw, tuple):
            return ", ".join(raw) if raw else "-"
        return str(raw) if raw != "" else "-"


@dataclass(frozen=True)
class FieldChange:
    field: str
    old: str
    new: str


@dataclass(frozen=True)
class TunnelChange:
    action: str  # "add" | "remove" | "change"
    before: TunnelView | None
    after: TunnelView | None
    fields: tuple[FieldChange, ...] = ()

    @property
    def view(self) -> TunnelView:
        view = self.after or self.before
        assert view is not None
        return view

    @property
    def ident(self) -> str:
        return self.view.ident

    @property
    def org(self) -> str:
        return self.view.org


@dataclass(frozen=True)
class GatewayChange:
    action: str  # "add" | "remove" | "change"
    name: str
    fields: tuple[FieldChange, ...] = ()


@dataclass(frozen=True)
class RiskWarning:
    subject: str  # tunnel ident, "gateway <name>" or "repository"
    kind: str  # revoke, disable, remove, lan-change, service-removal, key-change, ...
    message: str


@dataclass(frozen=True)
class Ref:
    name: str
    commit: str

    @property
    def short(self) -> str:
        return self.commit[:10]


@dataclass(frozen=True)
class RepoDiff:
    base: Ref
    head: Ref
    tunnel_changes: tuple[TunnelChange, ...]
    gateway_changes: tuple[GatewayChange, ...]
    warnings: tuple[RiskWarning, ...]
    problems: tuple[str, ...]  # validation problems at head, "file:line:col: message"
    unevaluated_orgs: tuple[str, ...]  # orgs whose head does not load: not diffed
    base_tunnels: int
    head_tunnels: int

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def has_changes(self) -> bool:
        return bool(self.tunnel_changes or self.gateway_changes)

    def count(self, action: str) -> int:
        return sum(1 for c in self.tunnel_changes if c.action == action)

    @property
    def orgs(self) -> tuple[str, ...]:
        return tuple(sorted({c.org for c in self.tunnel_changes}))

    def for_org(self, org: str) -> tuple[TunnelChange, ...]:
        return tuple(c for c in self.tunnel_changes if c.org == org)

    def summary(self) -> str:
        parts = [f"{self.count('add')} to add", f"{self.count('change')} to change",
                 f"{self.count('remove')} to remove"]
        if self.gateway_changes:
            parts.append(f"{len(self.gateway_changes)} gateway change(s)")
        return ", ".join(parts)


# ---- reading commits ---------------------------------------------------------------------------


def _open_repo(repo_path: Path) -> tuple[git.Repo, str]:
    """The git repository holding `repo_path`, and the config root's path inside its tree."""
    try:
        repo = git.Repo(repo_path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise PlanInputError(f"{repo_path} is not inside a git repository") from None
    if repo.bare or repo.working_tree_dir is None:
        return repo, ""
    root = Path(repo.working_tree_dir).resolve()
    try:
        inner = Path(repo_path).resolve().relative_to(root)
    except ValueError:
        raise PlanInputError(f"{repo_path} is outside the git work tree {root}") from None
    return repo, "" if str(inner) == "." else inner.as_posix()


def _resolve(repo: git.Repo, ref: str) -> git.Commit:
    try:
        return repo.commit(ref)
    except (git.BadName, ValueError, git.GitCommandError):
        raise PlanInputError(
            f"cannot resolve {ref!r} to a commit (fetch it first, e.g. git fetch origin; "
            "CI needs actions/checkout with fetch-depth: 0)"
        ) from None


def commit_files(commit: git.Commit, prefix: str) -> list[SourceFile]:
    """Every YAML file under `prefix` in the commit's tree, as loader input (paths relative to
    the config root). Blob ids let the parse cache skip files unchanged between commits."""
    try:
        tree = commit.tree / prefix if prefix else commit.tree
    except KeyError:
        return []  # the config root does not exist at this commit: an empty desired state
    files: list[SourceFile] = []
    for item in tree.traverse():
        if not isinstance(item, git.Blob):
            continue
        path = str(item.path)
        if not path.endswith((".yaml", ".yml")):
            continue
        rel = PurePosixPath(path).relative_to(prefix) if prefix else PurePosixPath(path)
        files.append(SourceFile(str(rel), item.data_stream.read(), item.hexsha))
    return sorted(files, key=lambda f: f.path)


# ---- the diff (pure) ---------------------------------------------------------------------------


def tunnel_view(tunnel: Tunnel, gateways: Mapping[str, Gateway]) -> TunnelView:
    gw = gateways.get(tunnel.gateway)
    services = tunnel.services if tunnel.services is not None else (gw.default_services if gw else ())
    return TunnelView(
        org=tunnel.org, name=tunnel.name, gateway=tunnel.gateway, subnet=str(tunnel.subnet),
        address=str(tunnel.customer_address), lans=tuple(str(n) for n in tunnel.lans),
        services=tuple(sorted(services)), status=tunnel.status.value,
        public_key=tunnel.public_key, persistent_keepalive=tunnel.persistent_keepalive,
        psk_rotation=tunnel.psk_rotation, cloud_keepalive=tunnel.cloud_keepalive,
        revoked_at=str(tunnel.revoked_at) if tunnel.revoked_at is not None else "",
        notes=tunnel.notes, subnet6=str(tunnel.subnet6 or ""),
        address6=str(tunnel.customer_address6 or ""), lans6=tuple(str(n) for n in tunnel.lans6),
    )


def _gateway_values(gw: Gateway) -> dict[str, str]:
    def services() -> str:
        return "; ".join(f"{n} {s.proto} {','.join(str(p) for p in s.ports)}"
                         for n, s in sorted(gw.services.items()))
    values: dict[str, str] = {}
    for name in GATEWAY_FIELDS:
        raw = getattr(gw, name)
        if name == "services":
            values[name] = services()
        elif name == "amneziawg":
            values[name] = "-" if raw is None else " ".join(f"{k}={v}" for k, v in raw.config_lines())
        elif isinstance(raw, tuple):
            values[name] = ", ".join(str(v) for v in raw) or "-"
        else:
            values[name] = "-" if raw is None else str(raw)
    return values


def _field_changes(old: Mapping[str, str], new: Mapping[str, str],
                   names: Iterable[str]) -> tuple[FieldChange, ...]:
    return tuple(FieldChange(n, old[n], new[n]) for n in names if old[n] != new[n])


def _view_values(view: TunnelView) -> dict[str, str]:
    return {n: view.value(n) for n in TUNNEL_FIELDS}


def diff_states(base: RepoState, head: RepoState, base_ref: Ref, head_ref: Ref) -> RepoDiff:
    """Pure: what merging head would change in the desired state, and what is risky about it."""
    skip = set(head.broken_orgs)  # a broken org's tunnels are missing at head, not removed
    old = {t.ident: tunnel_view(t, base.gateways) for t in base.tunnels if t.org not in skip}
    new = {t.ident: tunnel_view(t, head.gateways) for t in head.tunnels if t.org not in skip}
    changes: list[TunnelChange] = []
    for ident in sorted(old.keys() | new.keys()):
        before, after = old.get(ident), new.get(ident)
        if before is None and after is not None:
            changes.append(TunnelChange("add", None, after))
        elif after is None and before is not None:
            changes.append(TunnelChange("remove", before, None))
        elif before is not None and after is not None:
            fields = _field_changes(_view_values(before), _view_values(after), TUNNEL_FIELDS)
            if fields:
                changes.append(TunnelChange("change", before, after, fields))
    gw_changes: list[GatewayChange] = []
    for name in sorted(base.gateways.keys() | head.gateways.keys()):
        gb, gh = base.gateways.get(name), head.gateways.get(name)
        if gb is None:
            gw_changes.append(GatewayChange("add", name))
        elif gh is None:
            gw_changes.append(GatewayChange("remove", name))
        else:
            fields = _field_changes(_gateway_values(gb), _gateway_values(gh), GATEWAY_FIELDS)
            if fields:
                gw_changes.append(GatewayChange("change", name, fields))
    base_count = sum(1 for t in base.tunnels if t.org not in skip)
    return RepoDiff(
        base=base_ref, head=head_ref, tunnel_changes=tuple(changes),
        gateway_changes=tuple(gw_changes),
        warnings=tuple(risk_warnings(changes, gw_changes, base_count, base, head)),
        problems=tuple(str(p) for p in sorted(head.problems)),
        unevaluated_orgs=tuple(sorted(skip)),
        base_tunnels=len(base.tunnels), head_tunnels=len(head.tunnels),
    )


def _split(value: str) -> set[str]:
    return set() if value == "-" else {v.strip() for v in value.split(",")}


def risk_warnings(changes: Iterable[TunnelChange], gw_changes: Iterable[GatewayChange],
                  base_count: int, base: RepoState, head: RepoState) -> list[RiskWarning]:
    """Pure: a warning for each change that can cut a customer off or weaken isolation."""
    out: list[RiskWarning] = []
    leaving = 0  # tunnels that stop being served: removed, revoked or disabled
    for c in changes:
        if c.action == "remove":
            b = c.view
            leaving += b.status == TunnelStatus.active.value
            nets = f"{b.subnet}, {b.subnet6}" if b.subnet6 else b.subnet
            out.append(RiskWarning(c.ident, "remove",
                               f"deletes {c.ident} ({nets}): its peer is removed and the subnet "
                               "is free for reuse at once; 'status: revoked' keeps it reserved"))
            continue
        if c.action != "change":
            continue
        for f in c.fields:
            if f.field == "status" and f.new == TunnelStatus.revoked.value:
                leaving += f.old == TunnelStatus.active.value
                out.append(RiskWarning(c.ident, "revoke", f"revokes {c.ident}: the customer loses the "
                                   "tunnel for good (its subnet stays reserved)"))
            elif f.field == "status" and f.new == TunnelStatus.disabled.value:
                leaving += f.old == TunnelStatus.active.value
                out.append(RiskWarning(c.ident, "disable", f"disables {c.ident}: the customer loses "
                                   "the tunnel until it is re-enabled"))
            elif f.field == "lans":
                gone = sorted(_split(f.old) - _split(f.new))
                detail = f"; {', '.join(gone)} will no longer be routed" if gone else ""
                out.append(RiskWarning(c.ident, "lan-change", f"changes the routed LANs of {c.ident} "
                                   f"({f.old} -> {f.new}){detail}"))
            elif f.field == "lans6":
                out.append(_lans6_warning(c.ident, f))
            elif f.field == "subnet6":
                out.append(_subnet6_warning(c, f))
            elif f.field == "services":
                gone = sorted(_split(f.old) - _split(f.new))
                if gone:
                    out.append(RiskWarning(c.ident, "service-removal",
                                       f"{c.ident} loses service(s) {', '.join(gone)}"))
            elif f.field == "public_key":
                out.append(RiskWarning(c.ident, "key-change", f"replaces the public key of {c.ident}: "
                                   "the current router is cut off until it uses the new key"))
            elif f.field == "psk_rotation":
                out.append(RiskWarning(c.ident, "psk-rotation", f"rotates the preshared key of "
                                   f"{c.ident}: the customer must enter the new one "
                                   "(tunnelctl customer-config)"))
            elif f.field == "subnet":
                out.append(RiskWarning(c.ident, "subnet-change", f"moves {c.ident} from {f.old} to "
                                   f"{f.new}: the customer must change its tunnel address"))
            elif f.field == "gateway":
                out.append(RiskWarning(c.ident, "gateway-change", f"moves {c.ident} from gateway "
                                   f"{f.old} to {f.new}: the customer must reconfigure"))
    for g in gw_changes:
        if g.action == "remove":
            out.append(RiskWarning(f"gateway {g.name}", "gateway-remove",
                               f"removes gateway {g.name}: its host keeps its last state but no "
                               "longer receives changes"))
        v6 = _gateway_ipv6_warning(g, head)
        if v6 is not None:
            out.append(v6)
        for f in g.fields:
            if f.field in CUSTOMER_FACING_GATEWAY_FIELDS:
                users = sum(1 for t in head.tunnels
                            if t.gateway == g.name and t.status is TunnelStatus.active)
                out.append(RiskWarning(f"gateway {g.name}", "gateway-change",
                                   f"changes {f.field} of gateway {g.name} ({f.old} -> {f.new}): "
                                   f"all {users} customer router(s) on it must be reconfigured"))
            elif f.field == "services":
                out.append(RiskWarning(f"gateway {g.name}", "service-catalog",
                                   f"changes the service catalog of gateway {g.name}: check which "
                                   "ports tenants gain or lose"))
    if leaving > MANY_REMOVALS_COUNT or (
        leaving >= 2 and base_count and leaving / base_count > MANY_REMOVALS_SHARE
    ):
        share = f" ({leaving * 100 // base_count}% of {base_count})" if base_count else ""
        out.insert(0, RiskWarning("repository", "many-removals",
                              f"takes {leaving} tunnel(s) out of service{share}: "
                              "check this is intended"))
    return out


def _lans6_warning(ident: str, f: FieldChange) -> RiskWarning:
    old, new = _split(f.old), _split(f.new)
    detail = [f"{', '.join(sorted(new - old))} will be routed to this tunnel"] if new - old else []
    if old - new:
        detail.append(f"{', '.join(sorted(old - new))} will no longer be routed")
    return RiskWarning(ident, "lan-change", f"changes the routed IPv6 LANs of {ident} "
                       f"({f.old} -> {f.new}); {'; '.join(detail)}")


def _subnet6_warning(c: TunnelChange, f: FieldChange) -> RiskWarning:
    address6 = c.after.address6 if c.after is not None else ""
    if f.old == "-":
        message = (f"gives {c.ident} the IPv6 prefix {f.new}: the customer's router needs the "
                   f"IPv6 tunnel address {address6} to use it")
    elif f.new == "-":
        message = (f"takes IPv6 away from {c.ident} ({f.old}): the customer's IPv6 traffic "
                   "stops")
    else:
        message = (f"moves {c.ident} from {f.old} to {f.new}: the customer must change its "
                   f"IPv6 tunnel address to {address6}")
    return RiskWarning(c.ident, "subnet6-change", message)


def _gateway_ipv6_warning(g: GatewayChange, head: RepoState) -> RiskWarning | None:
    """One warning when a gateway gains, loses or moves its IPv6 (address6/pool6)."""
    fields = {f.field: f for f in g.fields if f.field in ("address6", "pool6")}
    if not fields:
        return None
    pool6 = fields.get("pool6")
    if pool6 is not None and pool6.old == "-":
        message = (f"gives gateway {g.name} IPv6 (pool6 {pool6.new}): a tunnel carries IPv6 only "
                   "once it has a subnet6, and its customer configures the address")
    elif pool6 is not None and pool6.new == "-":
        message = (f"removes IPv6 from gateway {g.name} (pool6 {pool6.old}): every IPv6 packet "
                   "from its tenants is dropped, and tunnels may no longer have subnet6 or lans6")
    else:
        users = sum(1 for t in head.tunnels if t.gateway == g.name and t.subnet6 is not None
                    and t.status is TunnelStatus.active)
        moved = "; ".join(f"{f.field} {f.old} -> {f.new}" for f in fields.values())
        message = (f"changes the IPv6 of gateway {g.name} ({moved}): all {users} customer "
                   "router(s) using IPv6 on it must be reconfigured")
    return RiskWarning(f"gateway {g.name}", "gateway-change", message)


# ---- entry points ------------------------------------------------------------------------------


def diff_commits(repo_path: Path | str, base_ref: str, head_ref: str, *,
                 today: date | None = None) -> RepoDiff:
    """Diff the desired state of two commits of the git repository holding `repo_path`.
    `today` decides which revoked subnets are still reserved (default: the current date)."""
    repo, prefix = _open_repo(Path(repo_path))
    base_commit, head_commit = _resolve(repo, base_ref), _resolve(repo, head_ref)
    cache = ParseCache()
    base = load_files(commit_files(base_commit, prefix), cache=cache, today=today)
    head = load_files(commit_files(head_commit, prefix), cache=cache, today=today)
    return diff_states(base, head, Ref(base_ref, base_commit.hexsha), Ref(head_ref, head_commit.hexsha))

