"""WireGuard key pairs made in-process (X25519), so generating thousands costs no processes."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)


def generate_private_key() -> str:
    raw = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(raw).decode()


def public_key(private_key: str) -> str:
    priv = X25519PrivateKey.from_private_bytes(base64.b64decode(private_key))
    return base64.b64encode(priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def keypair() -> tuple[str, str]:
    priv = generate_private_key()
    return priv, public_key(priv)
