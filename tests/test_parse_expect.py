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


def _applied() -> tuple[dict[str, Peer], dict[str, str], list[str]]:
    peers = {f"k{i}": Peer(f"k{i}", (f"10.20.0.{4 * i + 2}/32",), psk_digest(PSK_A if i % 2
                                                                              else PSK_B),
                           0, owner=f"o/t{i}") for i in range(6)}
    psks = {k: (PSK_A if i % 2 else PSK_B) for i, k in enumerate(peers)}
    lines = [_line(k, psks[k], p.allowed_ips[0], "off") for k, p in peers.items()]
    return peers, psks, lines


def test_a_dump_of_exactly_the_applied_peers_is_those_peers_in_any_order() -> None:
    parsers._peer_memo, parsers._last_dump = {}, None
    peers, psks, lines = _applied()
    parsers.expect_peers(peers, psks.get)
    dump = parsers.parse_wg_dump("\n".join([HEAD, *reversed(lines)]) + "\n", psk_digest)
    assert dump.peers == peers and all(dump.peers[k] is p for k, p in peers.items())
    assert dump.interface == parsers.WgInterfaceLine("cHVibGlj", 51820, 0, True)
    status = dump.status
    assert isinstance(status, parsers.LazyStatus)
    assert status._parsed is None  # the whole-dump path: no line was split
    assert status["k0"].latest_handshake == 0
    # One read-back only; the dump it read is the one the next no-op parse recognises.
    again = parsers.parse_wg_dump("\n".join([HEAD, *lines]), psk_digest)
    assert again.peers is dump.peers


def test_a_dump_that_differs_from_the_applied_peers_in_any_line_is_parsed_in_full() -> None:
    peers, psks, lines = _applied()
    extra = _line("k9", PSK_A, "10.20.0.99/32", "off")
    variants = {
        "a peer missing": lines[1:],
        "a peer more": [*lines, extra],
        "another PSK": [_line("k0", PSK_A, "10.20.0.2/32", "off"), *lines[1:]],
        "other allowed IPs": [_line("k0", PSK_B, "10.20.0.3/32", "off"), *lines[1:]],
        "a keepalive": [_line("k0", PSK_B, "10.20.0.2/32", "25"), *lines[1:]],
        "a duplicated line": [lines[0], *lines[:-1]],
    }
    for what, body in variants.items():
        parsers._peer_memo, parsers._last_dump = {}, None
        parsers.expect_peers(peers, psks.get)
        got = parsers.parse_wg_dump("\n".join([HEAD, *body]) + "\n", psk_digest).peers
        parsers._peer_memo, parsers._last_dump, parsers._expected_dump = {}, None, None
        full = parsers.parse_wg_dump("\n".join([HEAD, *body]) + "\n", psk_digest).peers
        assert got == full and got != peers, what


def test_an_unknown_psk_expects_no_whole_dump() -> None:
    parsers._peer_memo, parsers._last_dump = {}, None
    peers, psks, lines = _applied()
    del psks["k1"]
    parsers.expect_peers(peers, psks.get)
    assert parsers._expected_dump is None
    got = parsers.parse_wg_dump("\n".join([HEAD, *lines]) + "\n", psk_digest).peers
    assert got == peers
