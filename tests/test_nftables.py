"""The typed nftables table: values are checked before they reach nft, and the text, JSON and
canonical forms describe the same rules. No root needed."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from test_render import gateway, tunnel

from reconciler.engine.nftables import (
    Chain,
    Counter,
    DportIn,
    Hook,
    IfMatch,
    NftValueError,
    Rule,
    Table,
    Verdict,
    canonical_rule,
)
from reconciler.engine.render import RenderError, render_firewall


def _table(**over: Any) -> Table:
    chains = (Chain("svc_sip", (Rule((DportIn("udp", ((5060, 5060), (5080, 5080))),
                                      Verdict("accept"))),)),
              Chain("input", (Rule((IfMatch("iifname", "==", "wg1"), Counter(), Verdict("drop")),
                                   "drop"),), Hook("input", -5, "accept")))
    args: dict[str, Any] = {
        "family": "inet", "name": "tunnelctl", "interface": "wg1", "tenant_map": "tenant_profiles",
        "elements": [(0x0A140006, 32, "svc_sip"), (0xC0A80A00, 24, "svc_sip")],
        "routed_set": "routed_ranges", "routed": (ipaddress.IPv4Network("172.31.0.0/24"),),
        "chains": chains}
    args.update(over)
    return Table(**args)


@pytest.mark.parametrize("make", [
    lambda: IfMatch("iifname", "==", 'wg1" accept; flush ruleset; "'),
    lambda: IfMatch("oifname", "==", "a" * 16),
    lambda: Chain("input; flush ruleset", ()),
    lambda: DportIn("udp", ((5080, 5080), (5060, 5060))),  # unsorted
    lambda: DportIn("udp", ((1, 70000),)),
    lambda: DportIn("icmp", ((1, 2),)),  # type: ignore[arg-type]
    lambda: Rule((Verdict("accept"),), 'x" ; flush ruleset'),
    lambda: _table(elements=[(0x0A140007, 30, "svc_sip")]).text("ab"),  # host bits set
    lambda: _table(elements=[(0x0A140006, 32, "svc_nope")]),  # jump to a missing chain
    lambda: _table(routed=("172.31.0.0/24",)),  # text, not a network
])
def test_values_that_must_not_reach_nft_are_refused(make: Any) -> None:
    with pytest.raises(NftValueError):
        make()


def test_a_bad_value_from_the_repo_is_a_render_error() -> None:
    gw = gateway()
    object.__setattr__(gw, "interface", 'wg1"')  # past the model's own check
    with pytest.raises(RenderError):
        render_firewall(gw, [tunnel(1)], 'wg1" accept')


def test_text_and_json_transactions_hold_the_same_rules() -> None:
    table = _table()
    text = table.text("0123abcd")
    assert '\t\t\t10.20.0.6/32 : jump svc_sip,\n\t\t\t192.168.10.0/24 : jump svc_sip\n' in text
    assert 'iifname "wg1" counter drop comment "drop"' in text
    assert "udp dport { 5060, 5080 } accept" in text
    cmds = json.loads(table.transaction_json("0123abcd"))["nftables"]
    assert cmds[0] == {"add": {"table": {"family": "inet", "name": "tunnelctl"}}}
    assert cmds[1] == {"delete": {"table": {"family": "inet", "name": "tunnelctl"}}}
    rules = {(c["add"]["rule"]["chain"], canonical_rule(c["add"]["rule"]["expr"]))
             for c in cmds if "rule" in c.get("add", {})}
    assert rules == {(e[1], e[3]) for e in table.structure() if e[0] == "rule"}
    tmap = next(c["add"]["map"] for c in cmds if "map" in c.get("add", {}))
    assert tmap["elem"][0] == ["10.20.0.6", {"jump": {"target": "svc_sip"}}]
    assert tmap["elem"][1][0] == {"prefix": {"addr": "192.168.10.0", "len": 24}}


def test_canonical_rule_ignores_counts_and_one_element_sets_only() -> None:
    listed = [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                         "right": 443}}, {"counter": {"packets": 9, "bytes": 900}}, {"drop": None}]
    rendered = [{"match": {"right": {"set": [443]}, "op": "==",
                           "left": {"payload": {"field": "dport", "protocol": "tcp"}}}},
                {"counter": {"packets": 0, "bytes": 0}}, {"drop": None}]
    assert canonical_rule(listed) == canonical_rule(rendered)
    accept = [*rendered[:2], {"accept": None}]
    assert canonical_rule(accept) != canonical_rule(rendered)
    assert canonical_rule(list(reversed(rendered))) != canonical_rule(rendered)
