"""The shipped monitoring: Prometheus alerting rules (deploy/prometheus/, checked and unit
tested by the real `promtool`) and the Grafana dashboard (deploy/grafana/), whose every query
must name metrics the service really exports. promtool comes with Debian's `prometheus`
package (scripts/setup installs it); a missing promtool fails these tests, it does not skip
them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.service.metrics import PHASES, Revisions, ServiceMetrics, TunnelStats

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "tunnelctl-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tunnelctl-alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "tunnelctl-dashboard.json"
NAME_RE = re.compile(r"\b((?:tunnelctl|wireguard)_[a-z_]+)\b")
PROMETHEUS_OWN = {"up"}  # synthesised by Prometheus for every target, not by the service


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool missing: run ./scripts/setup (Debian package prometheus)"
    return path


def exported_names() -> set[str]:
    """Every sample name a scrape of the service can show (histogram and counter suffixes
    included), from a registry with every collector populated."""
    stats = [TunnelStats("wg1", "acme", "hq", "K=", 1700000000, 10, 20)]
    metrics = ServiceMetrics(lambda: stats)
    metrics.observe_cycle("applied", 0.2)
    metrics.set_revisions(Revisions("a" * 40, 1.0, "b" * 40, "refused", "b" * 40))
    metrics.set_tunnel_counts({"active": 1})
    metrics.set_phase("Ready")
    text = generate_latest(metrics.registry).decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def check_names(expr: str, exported: set[str], where: str) -> None:
    named = set(NAME_RE.findall(expr))
    unknown = named - exported
    assert not unknown, f"{where}: {sorted(unknown)} are not exported by the service: {expr}"
    own = {n for n in PROMETHEUS_OWN if re.search(rf"\b{n}\{{", expr)}
    assert named or own, f"{where}: names no metric the service exports: {expr}"


def test_the_service_exports_what_the_rules_rely_on() -> None:
    names = exported_names()
    for name in ("tunnelctl_phase", "tunnelctl_applied_behind_remote", "tunnelctl_remote_head_info",
                 "tunnelctl_audit_pending_entries", "wireguard_latest_handshake_seconds",
                 "tunnelctl_reconcile_total", "tunnelctl_fetch_errors_total"):
        assert name in names, name


def test_phase_and_lag_gauges_follow_the_state() -> None:
    metrics = ServiceMetrics()
    text = generate_latest(metrics.registry).decode()
    assert 'tunnelctl_phase{phase="Starting"} 1.0' in text
    assert "tunnelctl_applied_behind_remote 0.0" in text, "nothing fetched yet: not behind"
    metrics.set_phase("Degraded")
    metrics.set_revisions(Revisions(applied="a" * 40, remote_head="b" * 40))
    text = generate_latest(metrics.registry).decode()
    assert [ln for ln in text.splitlines() if ln.startswith("tunnelctl_phase{")] == [
        f'tunnelctl_phase{{phase="{p}"}} {1.0 if p == "Degraded" else 0.0}' for p in PHASES]
    assert "tunnelctl_applied_behind_remote 1.0" in text
    assert f'tunnelctl_remote_head_info{{commit="{"b" * 40}"}} 1.0' in text
    metrics.set_revisions(Revisions(applied="b" * 40, remote_head="b" * 40))
    assert "tunnelctl_applied_behind_remote 0.0" in generate_latest(metrics.registry).decode()


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_alert_rules_name_only_exported_metrics() -> None:
    exported = exported_names()
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "TunnelctlTunnelDown", "TunnelctlStalled", "TunnelctlDegraded", "TunnelctlCyclesFailing",
        "TunnelctlDown", "TunnelctlAuditQueueGrowing", "TunnelctlAppliedBehindRemote"}
    for rule in rules:
        check_names(rule["expr"], exported, rule["alert"])
    down = next(r for r in rules if r["alert"] == "TunnelctlTunnelDown")
    assert "> 180" in down["expr"], "the tunnel-down threshold is 3 minutes"


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    # The unit tests name the rule file relative to themselves.
    test = subprocess.run([tool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                          capture_output=True, text=True, check=False)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == {r["alert"] for r in alert_rules()}, "every alert has a unit test"


def dashboard_queries(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            # "query" is also a plain word ("prometheus") in the datasource variable
            is_query = key in ("expr", "definition") or (key == "query" and "(" in str(value))
            if is_query and isinstance(value, str):
                yield f"{path}.{key}", value
            else:
                yield from dashboard_queries(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from dashboard_queries(item, f"{path}[{i}]")


def test_dashboard_loads_and_every_query_names_exported_metrics(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    queries = list(dashboard_queries(dashboard))
    assert len(queries) >= 15
    exported = exported_names()
    for where, expr in queries:
        check_names(expr, exported, where)
    # Every panel query is valid PromQL: promtool parses them as recording rules, with
    # Grafana's variables replaced by what they expand to.
    exprs = [e for w, e in queries if w.endswith(".expr")]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}",
         "expr": e.replace("$__rate_interval", "1m").replace("$instance", ".*")}
        for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("panel_type", ["stat", "timeseries", "table"])
def test_dashboard_panels_have_a_datasource_and_a_place(panel_type: str) -> None:
    panels = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] == panel_type]
    assert panels
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"])
