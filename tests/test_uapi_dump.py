"""The quick read-back's peers from wireguard-go's control socket (engine/uapi_dump.py) read
exactly as the same peers from `wg show dump`: unit cases from the protocol's text, and (lab,
root) a real wireguard-go with handshaken routers, PSKs and both families compared with wg.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine.cycle import reconcile
from reconciler.engine.parsers import parse_wg_dump
from reconciler.engine.psk import psk_digest
from reconciler.engine.runner import Runner
from reconciler.engine.uapi_dump import dump_lines
from reconciler.lab import generate_repo
from reconciler.repo.state import load_repo

K1, K2, PSK, PRIV = (bytes([i]) * 32 for i in (1, 2, 3, 4))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


REPLY = "\n".join([
    f"private_key={PRIV.hex()}", "listen_port=51820",
    f"public_key={K1.hex()}", f"preshared_key={PSK.hex()}", "protocol_version=1",
    "endpoint=198.51.100.7:40001", "last_handshake_time_sec=1700000000",
    "last_handshake_time_nsec=5", "tx_bytes=10", "rx_bytes=20",
    "persistent_keepalive_interval=0", "allowed_ip=10.20.0.6/32",
    "allowed_ip=192.168.10.0/24", "allowed_ip=fd42:4242:1:1::2/128",
    f"public_key={K2.hex()}", f"preshared_key={'0' * 64}", "protocol_version=1",
    "last_handshake_time_sec=0", "last_handshake_time_nsec=0", "tx_bytes=0", "rx_bytes=0",
    "persistent_keepalive_interval=25", "",
])


def test_peer_lines_as_wg_prints_them() -> None:
    text = dump_lines(REPLY, [_b64(K2), _b64(K1), _b64(bytes(32))])
    assert text.splitlines() == [
        f"{_b64(PRIV)}\t(none)\t51820\toff",
        f"{_b64(K2)}\t(none)\t(none)\t(none)\t0\t0\t0\t25",
        (f"{_b64(K1)}\t{_b64(PSK)}\t198.51.100.7:40001\t"
         "10.20.0.6/32,192.168.10.0/24,fd42:4242:1:1::2/128\t1700000000\t20\t10\toff"),
    ]  # the unknown key is left out, as wg would not list it
    dump = parse_wg_dump(text, psk_digest, remember=False)
    assert dump.peers[_b64(K1)].psk_digest == psk_digest(_b64(PSK))
    assert dump.peers[_b64(K2)].allowed_ips == () and dump.peers[_b64(K2)].keepalive == 25


def test_a_key_is_found_only_at_a_line_start() -> None:
    # A preshared key equal to a wanted public key must not be taken for that peer.
    reply = f"listen_port=1\npublic_key={K1.hex()}\npreshared_key={K2.hex()}\n"
    assert dump_lines(reply, [_b64(K2)]).splitlines() == ["(none)\t(none)\t1\toff"]


@pytest.mark.lab
def test_the_control_socket_reads_as_wg_does(lab: Any, tmp_path: Path) -> None:
    gen = generate_repo(tmp_path / "repo", 3, gateway="gw-six", dual_stack=True, lan_every=1,
                        sip_only_every=0)
    up = lab(gen.root, private_keys=gen.private_keys)
    assert reconcile(load_repo(gen.root), up.target()).ok
    assert all(up.wait_handshakes(up.routers, timeout=12).values())  # endpoints known
    runner = Runner(up.netns)
    wg = runner.run(["wg", "show", up.interface, "dump"]).stdout
    keys = [line.split("\t")[0] for line in wg.splitlines()[1:]]
    assert len(keys) >= 3
    via_wg = parse_wg_dump(wg, psk_digest, remember=False)
    via_uapi = parse_wg_dump(dump_lines(runner.uapi_get(up.interface), keys), psk_digest,
                             remember=False)
    assert via_uapi.peers == via_wg.peers
    assert any(p.psk_digest for p in via_wg.peers.values())
    assert any(":" in ip for p in via_wg.peers.values() for ip in p.allowed_ips)
    for key in keys:  # endpoints as wg shows them (handshakes and counters may move between)
        assert via_uapi.status[key].endpoint == via_wg.status[key].endpoint is not None
    assert via_uapi.interface.listen_port == via_wg.interface.listen_port
