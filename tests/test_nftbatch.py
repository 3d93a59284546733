"""Element transactions sent as one nf_tables netlink batch (engine/nftbatch.py, the quick path
of a one-tenant change) against the same transactions through `nft -f`.

The proof is by the real kernel (lab, root): two namespaces load the same dual-stack table, a
random run of element transactions goes to one as netlink batches and to the other through
nft, and after each the two tables list back byte for byte the same. A transaction the
kernel refuses (a missing element, an overlapping interval) fails in both and changes neither
(all or nothing). Without root, the pure part: what is left to nft, and the batch's framing.
"""

from __future__ import annotations

import random
import secrets
import struct
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from test_firewall6 import gw6, six
from test_render import tunnel

from reconciler.engine import nftbatch
from reconciler.engine.commands import (
    Exec,
    NftElements,
    firewall_commands,
)
from reconciler.engine.hoststate import Firewall
from reconciler.engine.nft_transactions import element_transaction, firewall_transaction
from reconciler.engine.plan import ReplaceFirewall
from reconciler.engine.render import render_firewall
from reconciler.engine.runner import CommandError, Result, Runner

HOST = ("elem", "tenant_hosts", "10.20.0.10/32", "jump svc_sip")
LAN = ("elem", "tenant_profiles", "192.168.1.0/24", "jump svc_sip")


def test_the_tenant_maps_go_by_netlink_everything_else_by_nft() -> None:
    before = {LAN}
    assert nftbatch.encode([], [HOST], "inet", "tunnelctl", before) is not None
    assert nftbatch.encode([LAN], [], "inet", "tunnelctl", before) is not None
    routed = ("elem", "routed_ranges", "10.0.0.0/8", "")
    assert nftbatch.encode([], [routed], "inet", "tunnelctl", before) is None
    # nft adds a 0.0.0.0 interval end to an empty interval map first: left to nft.
    other = ("elem", "tenant_profiles", "192.168.2.0/24", "jump svc_sip")
    assert nftbatch.encode([], [other], "inet", "tunnelctl", set()) is None
    assert nftbatch.encode([LAN], [other], "inet", "tunnelctl", before) is None
    # An interval open at the top of the address space carries nft's userdata: nft's.
    top = ("elem", "tenant_profiles", "255.255.255.0/24", "jump svc_sip")
    assert nftbatch.encode([], [top], "inet", "tunnelctl", before) is None
    assert nftbatch.encode([], [("elem", "tenant_hosts", "10.0.0.0/24", "jump x")],
                           "inet", "tunnelctl", before) is None  # a prefix in a hash map
    assert nftbatch.encode([], [("elem", "tenant_hosts", "10.0.0.1/32", "queue")],
                           "inet", "tunnelctl", before) is None  # a verdict it cannot write
    many = [("elem", "tenant_hosts", f"10.21.{i >> 8}.{i & 255}/32", "jump svc_sip")
            for i in range(nftbatch.MAX_ELEMENTS + 1)]
    assert nftbatch.encode([], many, "inet", "tunnelctl", before) is None


def test_firewall_commands_pick_the_batch_and_keep_nfts_text() -> None:
    chain = ("chain", "input", "filter", "input", 0, "accept")
    old = Firewall("inet", "tunnelctl", "a", frozenset({chain, LAN}), "table inet tunnelctl {}")
    new = Firewall("inet", "tunnelctl", "b", frozenset({chain, LAN, HOST}),
                   "table inet tunnelctl {}")
    (cmd,) = firewall_commands(ReplaceFirewall(old, new))
    assert isinstance(cmd, NftElements)
    assert cmd.stdin == element_transaction([], [HOST])
    assert "netlink" in cmd.redacted() and "10.20.0.10 : jump svc_sip" in cmd.redacted()
    routed = ("elem", "routed_ranges", "10.0.0.0/8", "")
    (cmd,) = firewall_commands(ReplaceFirewall(old, Firewall(
        "inet", "tunnelctl", "c", frozenset({chain, LAN, routed}), "table inet tunnelctl {}")))
    assert isinstance(cmd, Exec) and cmd.argv == ("nft", "-f", "-")


def test_batch_framing() -> None:
    messages = nftbatch.encode([LAN], [HOST], "inet", "tunnelctl", {LAN, HOST})
    assert messages is not None and [m.kind for m in messages] == [
        nftbatch.NFT_MSG_DELSETELEM, nftbatch.NFT_MSG_NEWSETELEM]
    data = nftbatch.batch(messages, 7)
    seen = []
    pos = 0
    while pos < len(data):
        length, kind, flags, seq, _ = struct.unpack_from("=IHHII", data, pos)
        seen.append((kind, flags, seq))
        pos += length
    assert pos == len(data)
    ack, req, create = nftbatch.NLM_F_ACK, nftbatch.NLM_F_REQUEST, nftbatch.NLM_F_CREATE
    assert seen == [(nftbatch.NFNL_MSG_BATCH_BEGIN, req, 7),
                    ((10 << 8) | nftbatch.NFT_MSG_DELSETELEM, req | ack, 8),
                    ((10 << 8) | nftbatch.NFT_MSG_NEWSETELEM, req | ack | create, 9),
                    (nftbatch.NFNL_MSG_BATCH_END, req, 10)]
    # The interval map's delete names both ends of the LAN; no verdict on a delete.
    assert b"\xc0\xa8\x01\x00" in messages[0].body and b"\xc0\xa8\x02\x00" in messages[0].body
    assert b"svc_sip" not in messages[0].body and b"svc_sip\0" in messages[1].body


class _NftOnly(Runner):
    """A runner whose run() is its own: nft_elements then runs `nft -f -` (test doubles)."""

    def run(self, argv: Any, *, stdin: str | bytes | None = None, check: bool = True,
            write: bool = False, timeout: float = 60.0, detach: bool = False) -> Result:
        return super().run(argv, stdin=stdin, check=check, write=write, timeout=timeout,
                           detach=detach)


# ------------------------------------------------------------------------ lab (root)


def _ns() -> str:
    name = f"tcnb-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


@pytest.fixture
def two_netns() -> Iterator[tuple[str, str]]:
    a, b = _ns(), _ns()
    try:
        yield a, b
    finally:
        subprocess.run(["ip", "netns", "del", a], check=False)
        subprocess.run(["ip", "netns", "del", b], check=False)


def _nft(ns: str, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *argv], input=stdin, text=True,
                          capture_output=True, check=False)


def _listing(ns: str) -> str:
    proc = _nft(ns, "list", "table", "inet", "tunnelctl")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _pool(rng: random.Random) -> list[tuple[str | int, ...]]:
    """Elements a transaction may add: hosts and LANs of both families, some overlapping."""
    verdicts = ["jump svc_sip", "jump svc_rtp_sip", "accept"]
    out: list[tuple[str | int, ...]] = []
    for i in range(12):
        out.append(("elem", "tenant_hosts", f"10.20.9.{i * 4 + 2}/32", rng.choice(verdicts)))
        out.append(("elem", "tenant_hosts6", f"fd42:4242:1:{i + 0x40:x}::2/128",
                    rng.choice(verdicts)))
        out.append(("elem", "tenant_profiles", f"172.20.{i}.0/24", rng.choice(verdicts)))
        out.append(("elem", "tenant_profiles6", f"fd77:{i:x}::/48", rng.choice(verdicts)))
    out.append(("elem", "tenant_profiles", "172.20.0.0/23", "jump svc_sip"))  # overlaps two
    out.append(("elem", "tenant_profiles", "172.20.5.128/25", "jump svc_sip"))  # inside one
    out.append(("elem", "tenant_profiles6", "fd77:3::/64", "jump svc_sip"))
    return out


@pytest.mark.lab
def test_netlink_batches_leave_the_table_nft_leaves(two_netns: tuple[str, str]) -> None:
    by_netlink, by_nft = two_netns
    gw = gw6(routed_ranges=["172.31.0.0/24"])
    fw = render_firewall(gw, [six(1, lans=["192.168.3.0/24", "192.168.4.0/24"],
                                  lans6=["fd99:1::/48", "fd99:2::/48"]),
                              six(2, services=["prov"], lans=["192.168.5.0/24"],
                                  lans6=["fd99:3::/48"]), tunnel(3)], "wg1")
    for ns in two_netns:
        assert _nft(ns, "-f", "-", stdin=firewall_transaction(fw.text)).returncode == 0
    rng = random.Random(1306)
    pool = _pool(rng)
    runner = Runner(by_netlink)
    have = {e for e in fw.elements if e[0] == "elem" and e[1] in nftbatch.MAPS}
    sent = refused = skipped = 0
    for _ in range(60):
        removed = set(rng.sample(sorted(have, key=str), k=min(len(have), rng.randint(0, 3))))
        if rng.random() < 0.15:  # one that is not there: the kernel refuses the whole batch
            removed.add(rng.choice(pool))
        added = set(rng.sample(pool, k=rng.randint(0, 4))) - have
        messages = nftbatch.encode(removed, added, "inet", "tunnelctl", have)
        if messages is None:
            skipped += 1
            continue
        before = _listing(by_netlink)
        text = element_transaction(removed, added)
        via_nft = _nft(by_nft, "-f", "-", stdin=text)
        try:
            runner.nft_elements(messages, text)
            ok = True
        except CommandError as exc:
            ok = False
            assert "element inet tunnelctl" in str(exc) and exc.returncode > 0
        assert ok == (via_nft.returncode == 0), (text, via_nft.stderr)
        assert _listing(by_netlink) == _listing(by_nft)
        if ok:
            sent += 1
            have = (have - removed) | added
        else:
            refused += 1
            assert _listing(by_netlink) == before  # all or nothing
    assert sent >= 15 and refused >= 3, (sent, refused, skipped)  # both kinds were really tried


@pytest.mark.lab
def test_a_runner_double_gets_the_same_transaction_from_nft(two_netns: tuple[str, str]) -> None:
    ns, _ = two_netns
    fw = render_firewall(gw6(), [six(1, lans=["192.168.3.0/24"])], "wg1")
    assert _nft(ns, "-f", "-", stdin=firewall_transaction(fw.text)).returncode == 0
    host = ("elem", "tenant_hosts", "10.20.0.10/32", "accept")
    messages = nftbatch.encode([], [host], "inet", "tunnelctl", fw.elements)
    assert messages is not None
    double = _NftOnly(ns)
    double.nft_elements(messages, element_transaction([], [host]))
    assert [a[4:7] for a in double.log] == [("nft", "-f", "-")]
    assert "10.20.0.10 : accept" in _listing(ns)
