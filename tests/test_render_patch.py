"""A render patched from the last one (a few tunnel models changed) equals a whole render.

The service renders every new commit; after a one-file change render_host takes the last
result and swaps the changed tunnels' peers, routes, map elements and config block. Random
changes of a 300-tunnel repo (LANs, services, status, rotation, keys, additions, removals,
another gateway) are rendered both ways and must agree in every value, text and secret. The
same on a dual-stack gateway, whose tunnels also change their IPv6 prefix and IPv6 LANs.
"""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest

from reconciler.engine import render as R
from reconciler.engine.render import RenderError, render_host
from reconciler.engine.wgkeys import generate_private_key, keypair
from reconciler.repo.model import Gateway, Tunnel, TunnelStatus

GW = Gateway.model_validate({
    "name": "gw", "interface": "wg1", "listen_port": 51821, "address": "10.20.0.1/16",
    "pool": "10.20.0.0/16", "allocation_prefix": 30, "reserved": ["10.10.10.0/24"],
    "endpoint": "203.0.113.10:51821",
    "services": {"sip": {"proto": "udp", "ports": "5060,5080"},
                 "rtp": {"proto": "udp", "ports": "10000-20000"},
                 "prov": {"proto": "tcp", "ports": 443}},
    "default_services": ["sip", "rtp"]})
GW6 = GW.model_copy(update={
    "address6": ipaddress.IPv6Interface("fd42:4242:1::1/48"),
    "pool6": ipaddress.IPv6Network("fd42:4242:1::/48"),
    "routed_ranges6": (ipaddress.IPv6Network("fd42:9999::/64"),)})
KEY = generate_private_key()
SECRET = b"s" * 32


def _tunnel(i: int, **over: object) -> Tunnel:
    data: dict[str, object] = {
        "org": f"org{i}", "name": "site", "gateway": "gw", "public_key": keypair()[1],
        "subnet": f"10.20.{(4 * i + 4) >> 8}.{(4 * i + 4) & 255}/30",
        "lans": [f"172.{16 + (i >> 8)}.{i & 255}.0/24"] if i % 3 == 0 else [],
        "services": ["sip"] if i % 5 == 0 else None}
    data.update(over)
    return Tunnel.model_validate(data)


def _v6(i: int) -> dict[str, object]:
    """A dual-stack tunnel's IPv6 fields: every other one has a prefix, every fourth LANs
    (/48s, and a /128 that lands in the host map like a /32)."""
    out: dict[str, object] = {}
    if i % 2 == 0:
        out["subnet6"] = ipaddress.IPv6Network(f"fd42:4242:1:{i + 1:x}::/64")
    if i % 4 == 0:
        out["lans6"] = (ipaddress.IPv6Network(f"fd99:{i:x}::/48"),
                        ipaddress.IPv6Network(f"fd98::{i:x}/128"))
    return out


def _render(tunnels: list[Tunnel], gw: Gateway = GW) -> tuple[object, ...]:
    state, secrets = render_host(gw, tunnels, interface=None, private_key=KEY,
                                 host_secret=SECRET, config_path=Path("/nonexistent/wg1.conf"))
    fw = state.firewall
    assert fw is not None
    return (state.interface, dict(state.peers), {p.owner for p in state.peers.values()},
            state.routes, fw, fw.fingerprint, fw.text, state.config, secrets.config_text,
            dict(secrets.psks), secrets.private_key)


def _whole(tunnels: list[Tunnel], gw: Gateway = GW) -> tuple[object, ...]:
    R._last_host = None  # forget the last render: this one is made from scratch
    return _render(tunnels, gw)


def _mutate(rng: random.Random, tunnels: list[Tunnel], n: int, dual: bool = False) -> None:
    i = rng.randrange(len(tunnels))
    t = tunnels[i]
    kind = rng.randrange(11 if dual else 9)
    if kind == 9:  # an IPv6 prefix comes or goes (a free one: above any _v6 prefix)
        subnet6 = None if t.subnet6 else ipaddress.IPv6Network(
            f"fd42:4242:1:{0x1000 + rng.randrange(0x1000):x}::/64")
        tunnels[i] = t.model_copy(update={"subnet6": subnet6})
        return
    if kind == 10:  # IPv6 LANs come, go or change
        lans6 = rng.choice([(), (ipaddress.IPv6Network(f"fd97:{rng.randrange(0x10000):x}::/48"),),
                            (ipaddress.IPv6Network(f"fd96::{rng.randrange(0x10000):x}/128"),)])
        tunnels[i] = t.model_copy(update={"lans6": lans6})
        return
    if kind == 0:
        lans = () if t.lans else (ipaddress.IPv4Network(f"172.30.{i & 255}.{(i >> 8) * 16}/28"),)
        tunnels[i] = t.model_copy(update={"lans": lans})
    elif kind == 1:
        services = rng.choice([("sip",), ("rtp", "sip"), None, ("prov",)])
        tunnels[i] = t.model_copy(update={"services": services})
    elif kind == 2:
        status = rng.choice(["active", "disabled"])
        tunnels[i] = t.model_copy(update={"status": TunnelStatus(status)})
    elif kind == 3:
        tunnels[i] = t.model_copy(update={"psk_rotation": t.psk_rotation + 1,
                                          "cloud_keepalive": rng.choice([0, 25])})
    elif kind == 4:
        tunnels[i] = t.model_copy(update={"public_key": keypair()[1]})
    elif kind == 5:
        del tunnels[i]
    elif kind == 6:
        j = n + rng.randrange(600)
        tunnels.append(_tunnel(j, lans=[], services=None, **(_v6(j) if dual else {})))
    elif kind == 7:
        tunnels[i] = t.model_copy(update={"gateway": "other"})
    else:
        tunnels[i] = t.model_copy()  # a new object, same values


@pytest.mark.parametrize("dual", [False, True], ids=["ipv4", "dual-stack"])
def test_patched_render_equals_a_whole_render(dual: bool) -> None:
    rng = random.Random(13)
    n = 300
    gw = GW6 if dual else GW
    tunnels = [_tunnel(i, **(_v6(i) if dual else {})) for i in range(n)]
    _whole(tunnels, gw)
    patched = 0
    for step in range(120):
        for _ in range(rng.choice([1, 1, 2, 5])):
            _mutate(rng, tunnels, n, dual)
        R._last_host = R._last_host  # the last render stays: this one may patch it
        before = R._last_host
        try:
            got = _render(tunnels, gw)
        except RenderError:
            continue
        patched += before is not None and before[3] is not None
        last = R._last_host
        want = _whole(tunnels, gw)
        R._last_host = last
        assert got == want, f"step {step}"
    assert patched > 50
    if dual:  # the IPv6 maps were really there and patched
        fw = got[4]
        names = {e[1] for e in fw.elements if e[0] == "elem"}  # type: ignore[attr-defined]
        assert {"tenant_hosts6", "tenant_profiles6", "routed_ranges6"} <= names


def test_table_text_is_patched_not_formatted_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """IPv4 element changes patch the last table text line by line (the first and last line
    of a map, a new first line, elements moved between chains) and it equals the whole
    render's text: the randomised test above would pass with the fallback alone, so count."""
    from reconciler.engine import render_patch

    made: list[bool] = []
    real = render_patch._patched_text

    def counted(*args: object, **kw: object) -> str | None:
        out = real(*args, **kw)  # type: ignore[arg-type]
        made.append(out is not None)
        return out

    monkeypatch.setattr(render_patch, "_patched_text", counted)
    rng = random.Random(7)
    n = 300
    tunnels = [_tunnel(i) for i in range(n)]
    _whole(tunnels)
    edges = [0, n - 1, 0, n - 1]  # the first and last /32 and LAN of the maps
    for step in range(80):
        if step < len(edges):
            i = edges[step]
            tunnels[i] = tunnels[i].model_copy(update={"services": ("prov",) if step < 2 else None})
        elif step % 2:  # a LAN comes or goes: interval-map lines at their sorted places
            i = rng.randrange(len(tunnels))
            lan = (ipaddress.IPv4Network(f"172.31.{rng.randrange(256)}.0/24"),)
            tunnels[i] = tunnels[i].model_copy(update={"lans": () if tunnels[i].lans else lan})
        else:
            _mutate(rng, tunnels, n)
        before = R._last_host
        try:
            got = _render(tunnels)
        except RenderError:
            continue
        last = R._last_host
        want = _whole(tunnels)
        R._last_host = last
        assert got[6] == want[6], f"step {step}"
        assert before is not None
    assert len(made) > 15 and all(made)  # neither map ever empties here: no fallback


@pytest.mark.parametrize("lan", ["172.16.3.0/24", "172.16.3.128/25", "172.16.0.0/16",
                                 "10.20.0.8/29", "10.20.0.0/16"],
                         ids=["same LAN", "inside a LAN", "holds LANs", "holds a host",
                              "holds every host"])
def test_a_patched_overlap_is_refused_as_a_whole_render_refuses_it(lan: str) -> None:
    """The patch checks only the sources it put in; an overlap with any other tenant's LAN
    or /32 still fails with the whole render's error (tunnel 3 has 172.16.3.0/24, tunnel 1
    the host 10.20.0.10)."""
    tunnels = [_tunnel(i) for i in range(300)]
    _whole(tunnels)
    tunnels[7] = tunnels[7].model_copy(update={"lans": (ipaddress.IPv4Network(lan),)})
    with pytest.raises(RenderError) as patched:
        _render(tunnels)
    with pytest.raises(RenderError) as whole:
        _whole(tunnels)
    assert str(patched.value) == str(whole.value)
