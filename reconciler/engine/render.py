"""Render stage (pure): repo models -> the host's desired state.

For one gateway and its active tunnels: the interface, one peer per tunnel, routes for
customer LANs, the nftables table and the interface config file. Secrets come back separately
in `Secrets`; the state only carries digests. Reading the key files is the caller's job, so
this stage does no I/O beyond loading its templates. The parts:

- render_tenant: what one tunnel contributes (peer, routes, firewall sources), memoised;
- render_firewall: the typed nftables table;
- render_config: the wg-quick file text;
- render_patch: the last render patched for a few changed tunnels;
- this module: render_host, the entry point, which picks a patch or a whole render.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import is_
from pathlib import Path

from reconciler.engine.hoststate import ConfigFile, HostState, InterfaceConfig, Secrets
from reconciler.engine.render_config import SPLICE_MIN_PEERS, render_config
from reconciler.engine.render_firewall import ROUTED_SET, firewall_table, render_firewall
from reconciler.engine.render_patch import PATCH_MIN, Index, patched
from reconciler.engine.render_tenant import (
    MEMO,
    RenderError,
    TenantParts,
    active_tunnels,
    render_peers,
    render_routes,
    tunnel_allowed_ips,
    tunnel_services,
)
from reconciler.engine.wgkeys import public_key
from reconciler.repo.model import Gateway, Tunnel

__all__ = ["PATCH_MIN", "ROUTED_SET", "SPLICE_MIN_PEERS", "RenderError", "active_tunnels",
           "firewall_table", "interface_address", "render_config", "render_firewall",
           "render_host", "render_peers", "render_routes", "tunnel_allowed_ips",
           "tunnel_services"]


def interface_address(gateway: Gateway) -> str:
    """InterfaceConfig.address: address, plus address6 on a dual-stack gateway, sorted as
    text and ","-joined, as parsers.parse_ip_addr reads them back (ULA text sorts after any
    dotted quad, so IPv4 comes first)."""
    if gateway.address6 is None:
        return str(gateway.address)
    return ",".join(sorted((str(gateway.address), str(gateway.address6))))


def render_host(gateway: Gateway, tunnels: Iterable[Tunnel], *, interface: str | None,
                private_key: str, host_secret: bytes,
                config_path: Path | None) -> tuple[HostState, Secrets]:
    """Everything the host should look like for `gateway`, plus the secrets to get there.

    A call with the same inputs as the previous one (the same tunnel model objects, as in a
    service cycle that enforces the state it applied) returns the previous result: the values
    are immutable, and a no-op cycle then costs no rendering at all.
    """
    global _last_host
    seq = tuple(tunnels)  # a copy: a list the caller mutates later must not look the same
    key = (gateway, interface, private_key, host_secret, config_path)
    last = _last_host
    if last is not None and _same_objects(last[1], seq) and last[0] == key:
        return last[2]
    patch = None
    if last is not None and last[0] == key and len(seq) >= PATCH_MIN:
        # The index of a whole render is built on the first patch that needs it: a CLI
        # apply renders once and never pays for it.
        index = last[3] if last[3] is not None else Index.of(last[2], gateway, last[1])
        if index is not None:
            patch = patched(index, last[1], seq, gateway, host_secret)
    if patch is not None:
        result = patch.result
    else:
        result = _render_host(gateway, seq, interface=interface, private_key=private_key,
                              host_secret=host_secret, config_path=config_path)
    _last_host = (key, seq, result, patch)
    return result


def _same_objects(a: tuple[Tunnel, ...], b: tuple[Tunnel, ...]) -> bool:
    return len(a) == len(b) and all(map(is_, a, b))  # a C loop: 16k identity checks


_last_host: tuple[tuple[object, ...], tuple[Tunnel, ...], tuple[HostState, Secrets],
                 Index | None] | None = None


def _render_host(gateway: Gateway, tunnels: Sequence[Tunnel], *, interface: str | None,
                 private_key: str, host_secret: bytes,
                 config_path: Path | None) -> tuple[HostState, Secrets]:
    ifname = interface or gateway.interface
    active = active_tunnels(gateway, tunnels)
    peers, psks = render_peers(active, host_secret)
    secrets = Secrets(private_key, psks)
    iface = InterfaceConfig(ifname, gateway.listen_port, public_key(private_key),
                            interface_address(gateway), gateway.mtu, True)
    config = None
    if config_path is not None:
        text = render_config(iface, peers, secrets, gateway.amneziawg)
        secrets = Secrets(private_key, psks, text)  # kept for apply: rendered once per cycle
        config = ConfigFile(str(config_path), ConfigFile.digest_of(text.encode()))
    used: dict[int, TenantParts] = {}
    state = HostState(iface, peers, render_routes(gateway, active, ifname, used),
                      render_firewall(gateway, active, ifname, used), config)
    MEMO.tenants = used  # forget tunnels no longer rendered
    return state, secrets
