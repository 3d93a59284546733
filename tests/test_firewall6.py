"""The IPv6 half of the firewall on a dual-stack gateway: the IPv6 maps and rules, the checks
on their values, what observe parses back, the element commands, conntrack, and (lab, root)
the table checked, loaded, listed back and hand-edited in throwaway namespaces, with a few
packets over a veth pair proving the family-free drops hold for IPv6.

A v4-only gateway must render the table it rendered before IPv6 existed: the golden files
(tests/golden/commands, test_commands.py) pin that; here it is also shown that IPv6 fields
of a tunnel change nothing on such a gateway.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_render import gateway, tunnel

from reconciler.engine.apply import run_commands
from reconciler.engine.commands import (
    Exec,
    NftElements,
    firewall_commands,
)
from reconciler.engine.conntrack import collapse, flush_prefixes, matching_flows, shrunk_sources
from reconciler.engine.hostboot import closed_table
from reconciler.engine.hoststate import Firewall, Peer
from reconciler.engine.nft_transactions import (
    INTERVAL_DELETE_LIMIT,
    element_transaction,
    firewall_transaction,
    interval_deletes,
)
from reconciler.engine.nftables import (
    Chain,
    DaddrInSet,
    DaddrIs,
    IcmpType,
    NftValueError,
    Rule,
    SaddrVmap,
    Table,
    Verdict,
    canonical_rule,
)
from reconciler.engine.parsers import parse_nft_table
from reconciler.engine.plan import Plan, RemovePeer, ReplaceFirewall
from reconciler.engine.readback import read_map_element
from reconciler.engine.render import RenderError, firewall_table, render_firewall
from reconciler.engine.runner import Result, Runner
from reconciler.repo.model import Gateway, Tunnel

V6 = {"address6": "fd42:4242:1::1/48", "pool6": "fd42:4242:1::/48"}
NETPROBE = Path(__file__).resolve().parent.parent / "reconciler" / "lab" / "netprobe.py"


def gw6(**over: Any) -> Gateway:
    return gateway(**V6, **over)


def six(i: int, **over: Any) -> Tunnel:
    """Tunnel i with the IPv6 prefix fd42:4242:1:<i>::/64 (customer ::2)."""
    return tunnel(i, subnet6=f"fd42:4242:1:{i:x}::/64", **over)


def _elems(fw: Firewall, name: str) -> dict[str, str]:
    return {str(e[2]): str(e[3]) for e in fw.elements if e[0] == "elem" and e[1] == name}


def _rules(fw: Firewall, chain: str) -> list[str]:
    return [str(e[3]) for e in sorted((e for e in fw.elements if e[0] == "rule"
                                       and e[1] == chain), key=lambda e: int(e[2]))]


# ------------------------------------------------------------------------ render, no root


def test_a_v4_only_gateway_renders_no_ipv6_whatever_its_tunnels_say() -> None:
    plain = render_firewall(gateway(), [tunnel(1), tunnel(2, lans=["192.168.2.0/24"])], "wg1")
    with_v6 = render_firewall(gateway(), [six(1, lans6=["fd99:1::/48"]),
                                          tunnel(2, lans=["192.168.2.0/24"])], "wg1")
    assert with_v6.text == plain.text and with_v6.elements == plain.elements
    assert "ip6" not in plain.text and "ipv6" not in plain.text and "icmpv6" not in plain.text
    # The final drops name no family: in the inet table they drop IPv6 from tenants too.
    assert _rules(plain, "input")[-1] == canonical_rule([{"counter": None}, {"drop": None}])


def test_dual_stack_input_and_forward_rules() -> None:
    fw = render_firewall(gw6(routed_ranges6=["fd42:9999::/64"]), [six(1)], "wg1")
    lines = [ln.strip() for ln in fw.text.splitlines()]
    input_rules = lines[lines.index("chain input {") + 2:]
    input_rules = [ln.split(" comment ")[0] for ln in input_rules[:input_rules.index("}")]]
    assert input_rules == [
        'iifname != "wg1" accept',
        "ct direction reply ct state established,related accept",
        ("icmp type { destination-unreachable, time-exceeded, parameter-problem } ct state "
        "related accept"),
        ("icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, "
        "parameter-problem } ct state related accept"),
        "ip daddr 10.20.0.1 icmp type echo-request accept",
        "ip daddr 10.20.0.1 ip saddr vmap @tenant_hosts",
        "ip daddr 10.20.0.1 ip saddr vmap @tenant_profiles",
        "ip6 daddr fd42:4242:1::1 icmpv6 type echo-request accept",
        "ip6 daddr fd42:4242:1::1 ip6 saddr vmap @tenant_hosts6",
        "ip6 daddr fd42:4242:1::1 ip6 saddr vmap @tenant_profiles6",
        "counter drop"]
    fwd = lines[lines.index("chain forward {") + 2:]
    fwd = [ln.split(" comment ")[0] for ln in fwd[:fwd.index("}")]]
    assert fwd == [
        'oifname "wg1" ct direction reply ct state established,related accept',
        ('iifname "wg1" icmp type { destination-unreachable, time-exceeded, parameter-problem }'
        ' ct state related accept'),
        ('iifname "wg1" icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, '
        'parameter-problem } ct state related accept'),
        'iifname "wg1" ip6 daddr @routed_ranges6 ip6 saddr vmap @tenant_hosts6',
        'iifname "wg1" ip6 daddr @routed_ranges6 ip6 saddr vmap @tenant_profiles6',
        'iifname "wg1" counter drop', 'oifname "wg1" counter drop']
    assert _elems(fw, "routed_ranges6") == {"fd42:9999::/64": ""}
    assert ("set", "routed_ranges6", "ipv6_addr", "", "interval") in fw.elements
    # No routed ranges of either family: no forward accepts at all.
    bare = render_firewall(gw6(), [six(1)], "wg1")
    assert len(_rules(bare, "forward")) == 2 and "routed_ranges6" not in bare.text


def test_ipv6_sources_share_the_ipv4_service_chains() -> None:
    ts = [six(1, lans6=["fd99:1::/49", "fd99:1:0:8000::/49"]),  # adjacent: one interval
          six(2, services=["prov"], lans=["192.168.2.0/24"]),
          tunnel(3, lans6=["fd99:3::5/128"]),  # an IPv6 LAN without a prefix of its own
          six(4, services=[]),  # no services: in no map, only ping reaches the cloud
          tunnel(5)]  # IPv4 only on a dual-stack gateway
    fw = render_firewall(gw6(), ts, "wg1")
    assert _elems(fw, "tenant_hosts6") == {"fd42:4242:1:1::2/128": "jump svc_rtp_sip",
                                           "fd42:4242:1:2::2/128": "jump svc_prov",
                                           "fd99:3::5/128": "jump svc_rtp_sip"}
    assert _elems(fw, "tenant_profiles6") == {"fd99:1::/48": "jump svc_rtp_sip"}
    assert _elems(fw, "tenant_hosts")["10.20.2.6/32"] == "jump svc_prov"
    chains = sorted(str(e[1]) for e in fw.elements if e[0] == "chain")
    assert chains == ["forward", "input", "svc_prov", "svc_rtp_sip"]  # one per profile
    assert fw.text.index("map tenant_profiles6") > fw.text.index("map tenant_profiles {")


@pytest.mark.parametrize("ts", [
    [six(1, lans6=["fd99:1::/48"]), tunnel(2, lans6=["fd99:1:0:5::/64"])],  # LANs overlap
    [six(1), tunnel(2, lans6=["fd42:4242:1:1::/64"])],  # a /128 inside another's LAN
    [six(1), six(1, org="other")],  # one /128 twice
], ids=["lans", "host-in-lan", "host-twice"])
def test_an_ipv6_source_claimed_twice_is_a_render_error(ts: list[Tunnel]) -> None:
    with pytest.raises(RenderError, match="tenant source"):
        render_firewall(gw6(), ts, "wg1")


def _table(**over: Any) -> Table:
    chains = (Chain("svc_sip", (Rule((Verdict("accept"),)),)),)
    args: dict[str, Any] = {
        "family": "inet", "name": "tunnelctl", "interface": "wg1",
        "tenant_map": "tenant_profiles", "elements": [], "routed_set": "routed_ranges",
        "routed": (), "chains": chains, "host_map": "tenant_hosts",
        "host_map6": "tenant_hosts6", "tenant_map6": "tenant_profiles6",
        "hosts6": [(int(ipaddress.IPv6Address("fd42::2")), "svc_sip")],
        "elements6": [(int(ipaddress.IPv6Address("fd99::")), 48, "svc_sip")],
        "routed_set6": "routed_ranges6", "routed6": (ipaddress.IPv6Network("fd42:9::/64"),)}
    args.update(over)
    return Table(**args)


@pytest.mark.parametrize("make", [
    lambda: _table(tenant_map6=""),  # one IPv6 map without the other
    lambda: _table(host_map6="", tenant_map6="", routed6=()),  # IPv6 hosts, no maps
    lambda: _table(routed6=(ipaddress.IPv4Network("10.0.0.0/8"),)),
    lambda: _table(routed6=("fd42:9::/64",)),  # text, not a network
    lambda: _table(hosts6=[(1, "svc_nope")]),  # jump to a missing chain
    lambda: _table(elements6=[(int(ipaddress.IPv6Address("fd99::1")), 48, "svc_sip")]
                   ).element_items(),  # host bits set
    lambda: _table(elements6=[(1 << 128, 128, "svc_sip")]).text("ab"),  # not an address
    lambda: DaddrIs("fd42::1"),  # type: ignore[arg-type]
    lambda: SaddrVmap("tenant_hosts6", "ip7"),  # type: ignore[arg-type]
    lambda: DaddrInSet("routed_ranges6", "inet"),  # type: ignore[arg-type]
    lambda: IcmpType(("echo-request",), "ip4"),  # type: ignore[arg-type]
    lambda: IcmpType(("echo-reply; accept",)),
    lambda: IcmpType(()),
])
def test_ipv6_values_that_must_not_reach_nft_are_refused(make: Any) -> None:
    with pytest.raises(NftValueError):
        make()


def test_ipv6_text_and_json_transactions_hold_the_same_table() -> None:
    table = firewall_table(gw6(routed_ranges6=["fd42:9999::/64"]),
                           [six(1, lans6=["fd99:1::/48"])], "wg1")
    text = table.text("0123abcd")
    assert "\t\t\tfd42:4242:1:1::2 : jump svc_rtp_sip\n" in text  # hash map: no /128
    assert "\t\t\tfd99:1::/48 : jump svc_rtp_sip\n" in text
    cmds = json.loads(table.transaction_json("0123abcd"))["nftables"]
    rules = {(c["add"]["rule"]["chain"], canonical_rule(c["add"]["rule"]["expr"]))
             for c in cmds if "rule" in c.get("add", {})}
    assert rules == {(e[1], e[3]) for e in table.structure() if e[0] == "rule"}
    maps = {c["add"]["map"]["name"]: c["add"]["map"] for c in cmds if "map" in c.get("add", {})}
    assert maps["tenant_hosts6"]["type"] == "ipv6_addr"
    assert maps["tenant_hosts6"]["elem"] == [["fd42:4242:1:1::2",
                                              {"jump": {"target": "svc_rtp_sip"}}]]
    assert maps["tenant_profiles6"]["elem"][0][0] == {"prefix": {"addr": "fd99:1::", "len": 48}}
    assert maps["tenant_profiles6"]["flags"] == ["interval"]


def test_parse_ipv6_elements_as_nft_lists_them() -> None:
    """The shapes nft 1.0.6 prints (seen on this machine): a hash-map /128 and an interval
    /128 as plain addresses, an interval prefix as {"prefix": ...}, never its end."""
    jump = {"jump": {"target": "svc_sip"}}
    listing = {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "tunnelctl", "handle": 1}},
        {"map": {"family": "inet", "table": "tunnelctl", "name": "tenant_hosts6",
                 "type": "ipv6_addr", "map": "verdict", "elem": [["fd42:4242:1:5::2", jump]]}},
        {"map": {"family": "inet", "table": "tunnelctl", "name": "tenant_profiles6",
                 "type": "ipv6_addr", "map": "verdict", "flags": ["interval"],
                 "elem": [[{"prefix": {"addr": "fd00:1::", "len": 64}}, jump],
                          ["fd00:3::5", jump]]}},
        {"set": {"family": "inet", "table": "tunnelctl", "name": "routed_ranges6",
                 "type": "ipv6_addr", "flags": ["interval"],
                 "elem": [{"prefix": {"addr": "fd98::", "len": 56}}]}}]}
    fw = parse_nft_table(json.dumps(listing))
    assert fw is not None
    assert fw.elements == {
        ("map", "tenant_hosts6", "ipv6_addr", "verdict", ""),
        ("map", "tenant_profiles6", "ipv6_addr", "verdict", "interval"),
        ("set", "routed_ranges6", "ipv6_addr", "", "interval"),
        ("elem", "tenant_hosts6", "fd42:4242:1:5::2/128", "jump svc_sip"),
        ("elem", "tenant_profiles6", "fd00:1::/64", "jump svc_sip"),
        ("elem", "tenant_profiles6", "fd00:3::5/128", "jump svc_sip"),
        ("elem", "routed_ranges6", "fd98::/56", "")}


# ------------------------------------------------------------------------------ commands


def test_ipv6_element_commands() -> None:
    before = render_firewall(gw6(), [six(1)], "wg1")
    after = render_firewall(gw6(), [six(1), six(2, lans6=["fd99:2::/48"])], "wg1")
    (cmd,) = firewall_commands(ReplaceFirewall(before, after))
    # nft's own: it first puts an interval end at :: into the empty tenant_profiles6.
    assert isinstance(cmd, Exec) and cmd.argv == ("nft", "-f", "-")
    assert cmd.stdin is not None and cmd.stdin.splitlines() == [
        "add element inet tunnelctl tenant_hosts { 10.20.2.6 : jump svc_rtp_sip }",
        "add element inet tunnelctl tenant_hosts6 { fd42:4242:1:2::2 : jump svc_rtp_sip }",
        "add element inet tunnelctl tenant_profiles6 { fd99:2::/48 : jump svc_rtp_sip }"]
    (back,) = firewall_commands(ReplaceFirewall(after, before))
    assert isinstance(back, NftElements)  # deletes only: one netlink batch, nft's text kept
    assert "delete element inet tunnelctl tenant_hosts6 { fd42:4242:1:2::2 }" in back.stdin
    assert "delete element inet tunnelctl tenant_profiles6 { fd99:2::/48 }" in back.stdin


def _lans6_removed(n: int) -> ReplaceFirewall:
    ts = [tunnel(i, lans6=[f"fd99:{i:x}::/48"]) for i in range(1, n + 1)]
    return ReplaceFirewall(render_firewall(gw6(), [*ts, six(99)], "wg1"),
                           render_firewall(gw6(), [six(99)], "wg1"))


def test_many_ipv6_lan_removals_load_the_table_whole() -> None:
    few, many = _lans6_removed(INTERVAL_DELETE_LIMIT), _lans6_removed(INTERVAL_DELETE_LIMIT + 1)
    few_delta, many_delta = few.element_delta(), many.element_delta()
    assert few_delta is not None and many_delta is not None
    # The hash map's /128s and the IPv4 /32s of the same tunnels do not count; the LANs do.
    assert interval_deletes(few_delta[0]) == INTERVAL_DELETE_LIMIT
    (elements,) = firewall_commands(few)
    assert isinstance(elements, NftElements) and elements.stdin.startswith("delete element")
    (whole,) = firewall_commands(many)
    assert isinstance(whole, Exec) and many.new is not None
    assert whole.stdin == firewall_transaction(many.new.text)


def test_element_transaction_keeps_ipv6_prefixes_but_not_host_lengths() -> None:
    text = element_transaction([], [("elem", "tenant_hosts6", "fd42::2/128", "jump svc_sip"),
                                    ("elem", "tenant_profiles6", "fd99::/48", "jump svc_sip"),
                                    ("elem", "tenant_profiles6", "fd98::1:0/112", "jump svc_sip")])
    assert "tenant_hosts6 { fd42::2 : jump svc_sip }" in text
    assert "fd98::1:0/112 : jump svc_sip, fd99::/48 : jump svc_sip" in text


# ----------------------------------------------------------------------------- conntrack


def test_conntrack_sources_include_ipv6() -> None:
    before = render_firewall(gw6(), [six(1, lans6=["fd99:1::/48"]), six(2)], "wg1")
    after = render_firewall(gw6(), [six(2, services=["sip"])], "wg1")  # 1 gone, 2 lost rtp
    removed = RemovePeer(Peer("K", ("10.20.1.6/32", "fd42:4242:1:1::2/128", "fd99:1::/48"),
                              None, 0))
    got = shrunk_sources(Plan((ReplaceFirewall(before, after), removed)))
    assert got == ["10.20.1.6/32", "10.20.2.6/32", "fd42:4242:1:1::2/128",
                   "fd42:4242:1:2::2/128", "fd99:1::/48"]
    assert collapse(["fd99:1::/49", "fd99:1:0:8000::/49", "10.0.0.0/25", "10.0.0.128/25"]) == \
        ["10.0.0.0/24", "fd99:1::/48"]


def test_conntrack_ipv6_listing_to_delete_filters() -> None:
    listing = ("icmpv6   58 29 src=fd42:4242:1:5::2 dst=fd42:4242:1::1 type=128 code=0 id=7 "
               "src=fd42:4242:1::1 dst=fd42:4242:1:5::2 type=129 code=0 id=7 mark=0 use=1\n"
               "udp      17 29 src=fd42:4242:1:6::2 dst=fd42:4242:1::1 sport=4000 dport=5060 "
               "src=fd42:4242:1::1 dst=fd42:4242:1:6::2 sport=5060 dport=4000 mark=0 use=1\n")
    flows = matching_flows(listing, lambda a: a.startswith("fd42:4242:1:5:"), "ipv6")
    assert flows == [("-f", "ipv6", "-p", "icmpv6", "-s", "fd42:4242:1:5::2",
                      "-d", "fd42:4242:1::1")]


@dataclass
class _Recorder(Runner):
    """Records conntrack calls; answers a listing with `listing`."""

    listing: str = ""

    def run(self, argv: Sequence[str], **kw: Any) -> Result:
        self.log.append(tuple(argv))
        out = self.listing if "-L" in argv else ""
        return Result(tuple(argv), 0, out, "")


def test_flush_prefixes_uses_the_family_of_each_prefix() -> None:
    rec = _Recorder()
    assert flush_prefixes(rec, ["10.20.1.6/32", "fd99:1::/48"]) == []
    assert rec.log == [
        ("conntrack", "-D", "-f", "ipv4", "-s", "10.20.1.6", "--mask-src", "255.255.255.255"),
        ("conntrack", "-D", "-f", "ipv4", "-d", "10.20.1.6", "--mask-dst", "255.255.255.255"),
        ("conntrack", "-D", "-f", "ipv6", "-s", "fd99:1::", "--mask-src", "ffff:ffff:ffff::"),
        ("conntrack", "-D", "-f", "ipv6", "-d", "fd99:1::", "--mask-dst", "ffff:ffff:ffff::")]
    many = _Recorder(listing="udp 17 29 src=fd99:5::9 dst=fd42:4242:1::1 sport=1 dport=2 "
                             "src=fd42:4242:1::1 dst=fd99:5::9 sport=2 dport=1\n")
    assert flush_prefixes(many, [f"fd99:{i:x}::/48" for i in range(12)]) == []
    assert many.log == [("conntrack", "-L", "-f", "ipv6"),
                        ("conntrack", "-D", "-f", "ipv6", "-p", "udp", "-s", "fd99:5::9",
                         "-d", "fd42:4242:1::1", "--sport", "1", "--dport", "2")]


def test_read_map_element_compares_ipv6_addresses_not_spellings() -> None:
    rec = _Recorder(listing="")
    answers = {"fd42::2": "table inet tunnelctl {\n\tmap tenant_hosts6 {\n\t\telements = { "
               "fd42:0:0:0:0:0:0:2 : jump svc_sip }\n\t}\n}\n",
               "fd42::3": "elements = { fd42::4 : jump svc_sip }"}

    def run(argv: Sequence[str], **kw: Any) -> Result:
        return Result(tuple(argv), 0, answers[argv[-2]], "")

    rec.run = run  # type: ignore[method-assign]
    assert read_map_element(rec, "fd42::2/128", "tenant_hosts6") == "jump svc_sip"
    assert read_map_element(rec, "fd42::3/128", "tenant_hosts6") is None


def test_closed_boot_table_names_no_family() -> None:
    """Its drops match by interface only: IPv6 from tenants drops like IPv4 (the lab test
    below sends the packets)."""
    text = closed_table("wg1")
    assert " ip " not in text and "ip6" not in text and "ipv6" not in text
    assert 'iifname "wg1" counter drop' in text and "\t\tcounter drop" in text


# ---------------------------------------------------------------------- lab: real nft


def _ns() -> str:
    name = f"tcf6-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


@pytest.fixture
def netns() -> Iterator[str]:
    """A throwaway network namespace, deleted even when the test fails."""
    name = _ns()
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _nft(ns: str, *argv: str, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns, "nft", *argv], input=stdin, text=True,
                          capture_output=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"nft {argv}: {proc.stderr}")
    return proc.stdout


def _listed(ns: str) -> Firewall | None:
    return parse_nft_table(_nft(ns, "-j", "list", "table", "inet", "tunnelctl"))


def _dual_tunnels() -> list[Tunnel]:
    return [six(1, lans6=["fd99:1::/48", "fd99:3::5/128"]), six(2, services=["prov"]),
            six(3, lans=["192.168.3.0/24"], lans6=["fd99:30::/44"]), tunnel(4)]


@pytest.mark.lab
def test_dual_stack_table_loads_and_lists_back_equal(netns: str) -> None:
    gw = gw6(routed_ranges6=["fd42:9999::/64", "fd42:9998::/56"],
             routed_ranges=["172.31.0.0/24"])
    fw = render_firewall(gw, _dual_tunnels(), "wg1")
    _nft(netns, "-c", "-f", "-", stdin=firewall_transaction(fw.text))
    assert _nft(netns, "list", "tables") == ""  # -c checked it and loaded nothing
    _nft(netns, "-f", "-", stdin=firewall_transaction(fw.text))
    assert _listed(netns) == fw  # zero drift: a converged host plans nothing
    # The JSON form of the same transaction loads the same table.
    table = firewall_table(gw, _dual_tunnels(), "wg1")
    _nft(netns, "-j", "-f", "-", stdin=table.transaction_json(fw.fingerprint))
    assert _listed(netns) == fw


@pytest.mark.lab
def test_ipv6_element_commands_apply_and_read_back(netns: str) -> None:
    gw = gw6()
    before = render_firewall(gw, _dual_tunnels(), "wg1")
    after = render_firewall(gw, [*_dual_tunnels()[1:], six(5, lans6=["fd99:5::/48"])], "wg1")
    _nft(netns, "-f", "-", stdin=firewall_transaction(before.text))
    runner = Runner(netns=netns)
    for old, new in ((before, after), (after, before)):
        (cmd,) = firewall_commands(ReplaceFirewall(old, new))
        assert isinstance(cmd, (Exec, NftElements)) and cmd.stdin is not None
        assert cmd.stdin.startswith(("add element", "delete element"))  # not the whole table
        run_commands(runner, (cmd,))  # nft -f, or the netlink batch of the same elements
        assert _listed(netns) == new
    # observe_changes reads single IPv6 elements back with `nft get element`.
    assert read_map_element(runner, "fd42:4242:1:1::2/128", "tenant_hosts6") == \
        "jump svc_rtp_sip"
    assert read_map_element(runner, "fd99:1::/48", "tenant_profiles6") == "jump svc_rtp_sip"
    assert read_map_element(runner, "fd99:3::5/128", "tenant_hosts6") == "jump svc_rtp_sip"
    assert read_map_element(runner, "fd42:4242:1:5::2/128", "tenant_hosts6") is None
    assert read_map_element(runner, "fd99:5::/48", "tenant_profiles6") is None


def _handle(ns: str, chain: str, body: list[dict[str, Any]]) -> int:
    listing = json.loads(_nft(ns, "-j", "-a", "list", "chain", "inet", "tunnelctl", chain))
    for obj in listing["nftables"]:
        rule = obj.get("rule")
        if rule is not None and canonical_rule(rule["expr"]) == canonical_rule(body):
            return int(rule["handle"])
    raise AssertionError(f"no such rule in {chain}")


@pytest.mark.lab
@pytest.mark.parametrize("chain,edit", [
    ("input", "meta nfproto ipv6 counter accept"),  # the final drop made an IPv6 accept
    ("forward", "iifname \"wg1\" ip6 daddr @routed_ranges6 accept"),  # services dropped
], ids=["drop-to-accept", "vmap-to-accept"])
def test_a_hand_edit_of_an_ipv6_rule_is_drift(netns: str, chain: str, edit: str) -> None:
    gw = gw6(routed_ranges6=["fd42:9999::/64"])
    table = firewall_table(gw, _dual_tunnels(), "wg1")
    fw = render_firewall(gw, _dual_tunnels(), "wg1")
    _nft(netns, "-f", "-", stdin=firewall_transaction(fw.text))
    target = next(c for c in table.chains if c.name == chain)
    rule = target.rules[-1] if chain == "input" else target.rules[3]
    if chain == "input":
        assert rule.text().startswith("counter drop")
    else:
        assert "ip6 saddr vmap @tenant_hosts6" in rule.text()
    handle = _handle(netns, chain, rule.expr())
    _nft(netns, "replace", "rule", "inet", "tunnelctl", chain, "handle", str(handle), *edit.split())
    seen = _listed(netns)
    assert seen is not None and seen != fw
    assert {e[0] for e in seen.elements ^ fw.elements} == {"rule"}
    change = ReplaceFirewall(seen, fw)
    assert change.element_delta() is None  # a rule changed: the table is loaded whole
    (cmd,) = firewall_commands(change)
    assert isinstance(cmd, Exec) and cmd.stdin is not None
    _nft(netns, "-f", "-", stdin=cmd.stdin)
    assert _listed(netns) == fw


# ------------------------------------------------------------- lab: packets over a veth


@dataclass
class VethPair:
    """`gw` holds our table and the interface `ifname`; `tenant` is the other end, with the
    customer addresses of tunnel 1 (10.20.1.6, fd42:4242:1:1::2). Neighbours are static: our
    table drops neighbour discovery from the tenant interface, as it would on WireGuard
    (which has none)."""

    gw: str
    tenant: str
    ifname: str

    def probe_ping(self, dst: str) -> bool:
        proc = subprocess.run(["ip", "netns", "exec", self.tenant, "python3", str(NETPROBE),
                               "ping", "--dst", dst, "--timeout", "1"],
                              capture_output=True, text=True, check=False)
        assert proc.returncode in (0, 1), proc.stderr
        return proc.returncode == 0

    def load(self, text: str) -> None:
        _nft(self.gw, "-f", "-", stdin=firewall_transaction(text))


def _ip(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def veth() -> Iterator[VethPair]:
    hexid = secrets.token_hex(3)
    gw_ns, tenant_ns = _ns(), ""
    try:
        tenant_ns = _ns()
        ifname, peer = f"tg{hexid}", f"tt{hexid}"
        _ip(gw_ns, "link", "add", ifname, "type", "veth", "peer", "name", peer,
            "netns", tenant_ns)
        for ns, dev, addrs in ((gw_ns, ifname, ("10.20.0.1/16", "fd42:4242:1::1/48",
                                                "fd42:4242:1:ff::1/64")),
                               (tenant_ns, peer, ("10.20.1.6/16", "fd42:4242:1:1::2/48"))):
            for a in addrs:
                _ip(ns, "addr", "add", a, "dev", dev, *(["nodad"] if ":" in a else []))
            _ip(ns, "link", "set", dev, "up")
            _ip(ns, "link", "set", "lo", "up")
        mac = {ns: json.loads(_ip(ns, "-j", "link", "show", dev))[0]["address"]
               for ns, dev in ((gw_ns, ifname), (tenant_ns, peer))}
        _ip(gw_ns, "neigh", "replace", "fd42:4242:1:1::2", "lladdr", mac[tenant_ns],
            "nud", "permanent", "dev", ifname)
        for dst in ("fd42:4242:1::1", "fd42:4242:1:ff::1"):
            _ip(tenant_ns, "neigh", "replace", dst, "lladdr", mac[gw_ns], "nud", "permanent",
                "dev", peer)
        _ip(tenant_ns, "route", "add", "fd42:4242:1:ff::/64", "dev", peer)
        yield VethPair(gw_ns, tenant_ns, ifname)
    finally:
        for ns in (gw_ns, tenant_ns):
            if ns:
                subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.mark.lab
def test_ipv6_from_a_tenant_reaches_only_address6(veth: VethPair) -> None:
    # Without our table both families pass: the probes themselves work.
    assert veth.probe_ping("fd42:4242:1::1") and veth.probe_ping("fd42:4242:1:ff::1")
    # A gateway without address6: IPv4 ping passes, every IPv6 packet from the tenant drops.
    veth.load(render_firewall(gateway(), [six(1)], veth.ifname).text)
    assert veth.probe_ping("10.20.0.1")
    assert not veth.probe_ping("fd42:4242:1::1")
    # Dual-stack: ping to address6 passes; another address of the host does not.
    veth.load(render_firewall(gw6(), [six(1)], veth.ifname).text)
    assert veth.probe_ping("fd42:4242:1::1") and veth.probe_ping("10.20.0.1")
    assert not veth.probe_ping("fd42:4242:1:ff::1")
    # The closed boot table drops both families.
    veth.load(closed_table(veth.ifname))
    assert not veth.probe_ping("fd42:4242:1::1") and not veth.probe_ping("10.20.0.1")


@pytest.mark.lab
@pytest.mark.parametrize("extra", [0, 9], ids=["per-prefix", "one-listing"])
def test_conntrack_flush_drops_a_tenants_ipv6_flow(veth: VethPair, extra: int) -> None:
    veth.load(render_firewall(gw6(), [six(1)], veth.ifname).text)
    assert veth.probe_ping("fd42:4242:1::1")
    runner = Runner(netns=veth.gw)

    def flows() -> str:
        return runner.run(["conntrack", "-L", "-f", "ipv6"]).stdout

    assert "src=fd42:4242:1:1::2" in flows()
    others = [f"fd99:{i:x}::/48" for i in range(extra)]
    assert flush_prefixes(runner, ["fd42:4242:1:1::2/128", *others]) == []
    assert "fd42:4242:1:1::2" not in flows()
