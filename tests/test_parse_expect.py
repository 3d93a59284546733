"""The dump memo seeded with the peers just applied (parsers.expect_peers, a cold converge's
read-back): a line showing exactly a peer's canonical fields is that peer; a line that
differs in any field (allowed IPs, their order, keepalive, PSK) is parsed in full."""

from __future__ import annotations

from reconciler.engine import parsers
from reconciler.engine.hoststate import Peer
from reconciler.engine.psk import psk_digest

HEAD = "cHJpdmF0ZQ==\tcHVibGlj\t51820\toff"
PSK_A, PSK_B = "A" * 43 + "=", "B" * 43 + "="


def _line(key: str, psk: str, allowed: str, keepalive: str) -> str:
    return f"{key}\t{psk}\t(none)\t{allowed}\t0\t0\t0\t{keepalive}"


def test_expected_lines_are_the_applied_peers_and_others_parse_in_full() -> None:
    parsers._peer_memo, parsers._last_dump = {}, None
    peers = {
        "k1": Peer("k1", ("10.20.0.6/32",), psk_digest(PSK_A), 0, owner="o/a"),
        "k2": Peer("k2", ("10.20.0.10/32", "172.16.0.0/24"), psk_digest(PSK_B), 25, owner="o/b"),
        "k3": Peer("k3", ("10.20.0.14/32",), None, 0, owner="o/c"),
        "k4": Peer("k4", ("10.20.0.18/32",), psk_digest(PSK_A), 0, owner="o/d"),
    }
    psks = {"k1": PSK_A, "k2": PSK_B, "k4": PSK_A}
    parsers.expect_peers(peers, psks.get)
    text = "\n".join([
        HEAD,
        _line("k1", PSK_A, "10.20.0.6/32", "off"),  # exactly as applied
        _line("k2", PSK_B, "172.16.0.0/24,10.20.0.10/32", "25"),  # another order: in full
        _line("k3", "(none)", "10.20.0.14/32", "25"),  # keepalive differs
        _line("k4", PSK_B, "10.20.0.18/32", "off"),  # another PSK
    ]) + "\n"
    got = parsers.parse_wg_dump(text, psk_digest).peers
    assert got["k1"] is peers["k1"]
    assert got["k2"] is not peers["k2"] and got["k2"] == peers["k2"]
    assert got["k3"] != peers["k3"] and got["k3"].keepalive == 25
    assert got["k4"] != peers["k4"] and got["k4"].psk_digest == psk_digest(PSK_B)
