"""wireguard-go's `get=1` reply, for a few peers, as the lines `wg show <if> dump` prints. Pure.

Why: reading back the peers a one-tenant change touched needs a full read either way (no
interface can list one peer), but asking wireguard-go's control socket directly costs about
half of running `wg show dump` (~45 ms against ~80-100 ms at 16k peers: no process, and no
conversion of 16k peers to base64 text). The few wanted peers are found by key in the reply
and written as dump lines, so parsers.parse_wg_dump reads them exactly as it reads wg's.

The reply (the cross-platform UAPI, wireguard.com/xplatform): interface lines, then per peer
`public_key=<hex>` followed by its fields; keys are hex, an all-zero preshared key is none,
there is no endpoint line without an endpoint, and one `allowed_ip=` line per prefix.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

NONE = "(none)"
ZERO_KEY = "0" * 64


def dump_lines(reply: str, keys: Iterable[str]) -> str:
    """The dump's interface line and the lines of those of `keys` (base64 public keys) the
    reply holds, in `keys` order; a key the device does not have is left out."""
    out = [_interface_line(reply)]
    for key in keys:
        hexkey = base64.b64decode(key).hex()
        at = reply.find(f"public_key={hexkey}\n")
        if at < 0 or (at > 0 and reply[at - 1] != "\n"):
            continue
        end = reply.find("\npublic_key=", at)
        block = reply[at:end if end >= 0 else len(reply)]
        out.append(_peer_line(key, block))
    return "\n".join(out) + "\n"


def _fields(block: str) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for line in block.split("\n"):
        name, sep, value = line.partition("=")
        if sep:
            fields.setdefault(name, []).append(value)
    return fields


def _b64(hexkey: str | None) -> str:
    if hexkey is None or hexkey == ZERO_KEY:
        return NONE
    return base64.b64encode(bytes.fromhex(hexkey)).decode()


def _interface_line(reply: str) -> str:
    """private key, public key, listen port, fwmark. The public key is not in the reply (wg
    derives it): NONE here; the quick read-back takes the interface from the full observe."""
    end = reply.find("public_key=")
    f = _fields(reply[:end if end >= 0 else len(reply)])
    fwmark = f.get("fwmark", ["0"])[0]
    return "\t".join([_b64(f.get("private_key", [None])[0]), NONE,
                      f.get("listen_port", ["0"])[0], "off" if fwmark == "0" else fwmark])


def _peer_line(key: str, block: str) -> str:
    f = _fields(block)
    allowed = f.get("allowed_ip", [])
    keepalive = f.get("persistent_keepalive_interval", ["0"])[0]
    return "\t".join([
        key,
        _b64(f.get("preshared_key", [None])[0]),
        f.get("endpoint", [NONE])[0],
        ",".join(allowed) if allowed else NONE,
        f.get("last_handshake_time_sec", ["0"])[0],
        f.get("rx_bytes", ["0"])[0],
        f.get("tx_bytes", ["0"])[0],
        "off" if keepalive == "0" else keepalive,
    ])
