"""Preshared keys derived on the host, so git never holds one.

PSK = HKDF-SHA256(host secret, info = tunnel identity + rotation counter). A reprovisioned
host recovers every tunnel's PSK from git plus its one secret file; bumping `psk_rotation`
in a tunnel's YAML rotates exactly that tunnel's key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SALT = b"tunnelctl-psk-v1"
SECRET_BYTES = 32


def derive_psk(host_secret: bytes, org: str, name: str, rotation: int) -> str:
    """Base64 WireGuard preshared key for one tunnel identity and rotation."""
    info = f"tunnelctl/psk/v1|{org}|{name}|{rotation}".encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=SALT, info=info).derive(host_secret)
    return base64.b64encode(key).decode()


def psk_deriver(host_secret: bytes) -> Callable[[str, str, int], str]:
    """derive_psk for many tunnels of one host secret: the same keys, ~10x faster.

    HKDF's extract step depends only on the salt and the secret, so it runs once; each key is
    then one HMAC (RFC 5869 expand; 32 bytes are a single SHA-256 block, T(1)). The HMAC's
    keyed inner and outer hash states (RFC 2104: the 32-byte PRK padded to SHA-256's 64-byte
    block, xor ipad / opad) depend only on the PRK too, so each key copies them instead of
    keying an HMAC again (16k tunnels: ~35 -> ~15 ms).
    """
    prk = hmac.digest(SALT, host_secret, "sha256").ljust(_BLOCK, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in prk))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in prk))

    def derive(org: str, name: str, rotation: int) -> str:
        h = inner.copy()
        h.update(f"tunnelctl/psk/v1|{org}|{name}|{rotation}\x01".encode())
        o = outer.copy()
        o.update(h.digest())
        return base64.b64encode(o.digest()).decode()

    return derive


_BLOCK = 64  # SHA-256's block size: an HMAC key up to it is zero-padded, never hashed


def psk_digest(psk: str) -> str:
    """Short, non-reversible fingerprint used in plans, logs and audit instead of the key."""
    return hashlib.sha256(b"tunnelctl-psk-digest|" + psk.encode()).hexdigest()[:16]


def read_host_secret(path: Path) -> bytes:
    data = path.read_bytes().strip()
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raw = b""
    if len(raw) < 32:
        raise ValueError(f"{path}: host PSK secret must be base64 of at least 32 random bytes")
    return raw


def create_host_secret(path: Path) -> bool:
    """Create the secret file (0600) if absent; never overwrite. Returns True if created."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(os.urandom(SECRET_BYTES)).decode() + "\n")
    return True
