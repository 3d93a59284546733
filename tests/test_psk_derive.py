"""The fast PSK deriver gives byte for byte the keys of cryptography's HKDF-SHA256
(derive_psk), on random host secrets and random tunnel identities."""

from __future__ import annotations

import os
import random

from reconciler.engine.psk import derive_psk, psk_deriver


def _word(rng: random.Random) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-._|äß€"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 70)))


def test_the_fast_deriver_gives_cryptographys_hkdf_keys_on_random_inputs() -> None:
    rng = random.Random(13)
    for _ in range(40):
        secret = os.urandom(rng.choice([32, 33, 48, 64, 65, 100]))
        derive = psk_deriver(secret)
        for _ in range(25):
            org, name, rotation = _word(rng), _word(rng), rng.randint(0, 10**6)
            assert derive(org, name, rotation) == derive_psk(secret, org, name, rotation)


def test_each_input_changes_the_key() -> None:
    secret = os.urandom(32)
    derive = psk_deriver(secret)
    keys = {derive("acme", "hq", 0), derive("acme", "hq", 1), derive("acme", "hq2", 0),
            derive("acme2", "hq", 0), psk_deriver(os.urandom(32))("acme", "hq", 0)}
    assert len(keys) == 5
    assert derive("acme", "hq", 0) == derive("acme", "hq", 0)  # the states are copied, not used
