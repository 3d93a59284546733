"""The rollback snapshot reads the keys (one full `wg show dump`) exactly when undoing the
plan must send a key the host holds now: a removed or re-keyed peer's PSK, a replaced
private key. A cold converge (an interface without a key, peers added) reads none."""

from __future__ import annotations

from typing import Any

from reconciler.engine.hoststate import InterfaceConfig, ObservedState, Peer
from reconciler.engine.observe import read_snapshot
from reconciler.engine.plan import AddPeer, Plan, RemovePeer, SetInterface, UpdatePeer
from reconciler.engine.runner import Result, Runner

DUMP = ("cHJpdmF0ZQ==\tcHVibGlj\t51820\toff\n"
        "k1\tUFNLUFNLUFNL\t(none)\t10.20.0.6/32\t0\t0\t0\toff\n")


class _Dumps(Runner):
    def __init__(self) -> None:
        super().__init__(None)
        self.reads: list[tuple[str, ...]] = []

    def run(self, argv: Any, **kwargs: Any) -> Result:
        self.reads.append(tuple(argv))
        return Result(tuple(argv), 0, DUMP if list(argv[:2]) == ["wg", "show"] else "", "")


def _iface(key: str | None) -> InterfaceConfig:
    return InterfaceConfig("wg9", 51820, key, "10.20.0.1/16", 1420, True)


def _peer(key: str, psk: str | None) -> Peer:
    return Peer(key, ("10.20.0.6/32",), psk, 0)


def _dumped(*changes: Any) -> tuple[bool, Any]:
    runner = _Dumps()
    state = ObservedState(_iface(None), {}, frozenset(), None, None)
    snap = read_snapshot(runner, "wg9", state, None, Plan(tuple(changes)))
    return any(a[:2] == ("wg", "show") for a in runner.reads), snap.secrets


def test_a_cold_converge_reads_no_keys() -> None:
    read, secrets = _dumped(SetInterface(_iface(None), _iface("pub")),
                            AddPeer(_peer("k1", "d1")), AddPeer(_peer("k2", None)))
    assert not read and secrets.private_key is None and secrets.psks == {}


def test_keys_are_read_when_undoing_must_send_one() -> None:
    assert _dumped(SetInterface(_iface("old"), _iface("new")))[0]
    assert _dumped(RemovePeer(_peer("k1", "d1")))[0]
    assert _dumped(UpdatePeer(_peer("k1", "d1"), _peer("k1", "d2")))[0]
    read, secrets = _dumped(UpdatePeer(_peer("k1", "d1"), _peer("k1", None)))
    assert read and secrets.private_key == "cHJpdmF0ZQ==" and secrets.psks == {"k1": "UFNLUFNLUFNL"}


def test_no_key_to_keep_reads_none() -> None:
    assert not _dumped(RemovePeer(_peer("k1", None)))[0]  # a peer without a PSK
    assert not _dumped(UpdatePeer(_peer("k1", None), _peer("k1", "d2")))[0]  # PSK added
    assert not _dumped(UpdatePeer(_peer("k1", "d1"), Peer("k1", ("10.9.0.0/24",), "d1", 0)))[0]
    assert not _dumped(SetInterface(_iface("same"), _iface("same")))[0]  # e.g. a new port
