"""Render, the interface config file (pure): the wg-quick (or awg-quick) text written for
reboots, from templates/wg-interface.conf.j2. It holds the private key and the PSKs: the
caller writes it 0600 and never logs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import jinja2

from reconciler.engine.hoststate import InterfaceConfig, Peer, Secrets
from reconciler.engine.templates import template_dir
from reconciler.repo.model import AmneziaWG

CONFIG_TEMPLATE = "wg-interface.conf.j2"


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # nft and wg-quick syntax, not HTML
        keep_trailing_newline=True,
    )
    return env


def render_config(interface: InterfaceConfig, peers: Mapping[str, Peer], secrets: Secrets,
                  amneziawg: AmneziaWG | None = None) -> str:
    """The wg-quick file text. Contains the private key and PSKs: write it 0600, never log it.

    With `amneziawg` it is an awg-quick file: the obfuscation keys under [Interface], printed
    from AmneziaWG.config_lines(), the source the customer configs print from too. Plain
    wg-quick refuses those keys, so a host without AmneziaWG fails loudly at boot instead of
    running unobfuscated.
    """
    ordered = sorted(peers.values(), key=lambda p: (p.owner or "", p.public_key))
    obfuscation = amneziawg.config_lines() if amneziawg is not None else ()
    template = _env().get_template(CONFIG_TEMPLATE)
    if len(ordered) >= SPLICE_MIN_PEERS and _splice_agrees(template):
        # The frame from the template, each peer's block by an f-string: 16k blocks cost
        # ~25 ms instead of ~0.17 s through jinja.
        frame = template.render(interface=interface, private_key=secrets.private_key,
                                peers=(), psks={}, obfuscation=obfuscation)
        return frame + "".join([peer_block(p, secrets.psks.get(p.public_key))
                                for p in ordered])
    return template.render(
        interface=interface, private_key=secrets.private_key, peers=ordered, psks=secrets.psks,
        obfuscation=obfuscation)


SPLICE_MIN_PEERS = 64


def peer_block(peer: Peer, psk: str | None) -> str:
    """One [Peer] block exactly as the template's peer loop renders it (checked against the
    template before first use, see _splice_agrees). Not memoised: an f-string per peer costs
    ~1.5 us, and 16k cached blocks would be ~6 MiB more peak memory for ~25 ms."""
    lines = ["[Peer]", f"# {peer.owner or 'unnamed'}", f"PublicKey = {peer.public_key}"]
    if psk:
        lines.append(f"PresharedKey = {psk}")
    lines.append(f"AllowedIPs = {', '.join(peer.allowed_ips)}")
    if peer.keepalive:
        lines.append(f"PersistentKeepalive = {peer.keepalive}")
    return "\n".join(lines) + "\n\n"


_splice_checked: dict[int, bool] = {}


def _splice_agrees(template: jinja2.Template) -> bool:
    """Whether frame + _peer_block gives the template's own text, tried once per loaded
    template on sample peers (with and without PSK, keepalive, owner, several IPs); when a
    template edit breaks that, every render goes through jinja as before."""
    key = id(template)
    ok = _splice_checked.get(key)
    if ok is None:
        samples = [Peer("A" * 43 + "=", ("10.20.0.6/32", "192.168.1.0/24"), "d", 25, owner="o/a"),
                   Peer("B" * 43 + "=", ("10.20.0.10/32",), None, 0),
                   Peer("D" * 43 + "=", ("10.20.0.14/32", "fd42:4242:1:3::2/128",
                                         "fd99:1::/48"), None, 0, owner="o/c")]
        psks = {samples[0].public_key: "C" * 43 + "="}
        iface = InterfaceConfig("wg9", 51821, None, "10.20.0.1/16,fd42:4242:1::1/48", 1420, True)
        whole = template.render(interface=iface, private_key="K", peers=samples, psks=psks,
                                obfuscation=())
        frame = template.render(interface=iface, private_key="K", peers=(), psks={},
                                obfuscation=())
        spliced = frame + "".join(peer_block(p, psks.get(p.public_key)) for p in samples)
        ok = _splice_checked[key] = whole == spliced
    return ok
