"""The customer's own WireGuard key, for the one render that needs it.

The WireGuard mobile apps refuse a config without PrivateKey, so a QR code they can import must
carry the customer's private key. tunnelctl never stores one: ops either hand it in for one
render (read from a file or stdin, never from argv, where `ps` and shell history would keep it)
or let `new_customer_keypair()` make a pair whose private half is shown once; only the public
half goes into git.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from reconciler.engine import wgkeys


class CustomerKeyError(ValueError):
    """The key given is not usable; the message never contains the key."""


@dataclass(frozen=True)
class CustomerKeyPair:
    """A fresh customer key pair. Print `private_key` once; store only `public_key`."""

    private_key: str
    public_key: str

    def __repr__(self) -> str:  # keep the private key out of tracebacks and debug output
        return f"CustomerKeyPair(public_key={self.public_key!r})"


def new_customer_keypair() -> CustomerKeyPair:
    """For `tunnelctl new --generate-key`: made in-process, nothing written anywhere."""
    private, public = wgkeys.keypair()
    return CustomerKeyPair(private, public)


def parse_private_key(text: str) -> str:
    """The key in `text` (one base64 line, surrounding whitespace ignored)."""
    key = text.strip()
    if "\n" in key or not key:
        raise CustomerKeyError("expected exactly one line holding a WireGuard private key "
                               "(the output of 'wg genkey')")
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise CustomerKeyError("the private key is not base64 (expected the output of "
                               "'wg genkey')") from None
    if len(raw) != 32 or base64.b64encode(raw).decode() != key:
        raise CustomerKeyError("the private key is not 32 bytes of canonical base64 (expected "
                               "the output of 'wg genkey')")
    return key


def read_private_key(source: Path | TextIO) -> str:
    """Read a private key from a file path or an open stream (e.g. stdin for `-`)."""
    if isinstance(source, Path):
        try:
            text = source.read_text()
        except OSError as exc:
            raise CustomerKeyError(f"{source}: {exc.strerror}") from None
    else:
        text = source.read(4096)  # a key is 44 characters; never slurp an endless stream
    return parse_private_key(text)


def check_belongs_to(private_key: str, public_key: str, ident: str) -> None:
    """Refuse a private key whose public key is not the one registered for the tunnel: the
    config would look right and never get a handshake."""
    derived = wgkeys.public_key(parse_private_key(private_key))
    if derived != public_key:
        raise CustomerKeyError(
            f"the private key given does not belong to {ident}: its public key is {derived}, "
            f"the tunnel file registers {public_key}")
