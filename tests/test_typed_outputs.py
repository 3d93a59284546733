"""Every string field of both models, fuzzed: a file is either refused with a located problem,
or what it renders is read back by the real parsers to the same values (`nft -c -f` in a
scratch namespace for the firewall, `wg-quick strip` for the customer's file)."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from repo_kit import GATEWAY_YAML, key, load

from reconciler.engine.render import active_tunnels, render_firewall
from reconciler.operator import customer_config as cc

pytestmark = pytest.mark.lab  # a scratch network namespace for nft

HOSTILE = "\n\r\t \"'{}[];#$`\\|&<>:=,/.-_@%*!~^()?\x00\x1b\u2028"
text = st.text(st.sampled_from(HOSTILE) | st.characters(codec="utf-8"), max_size=24)


def either(good: list[str]) -> st.SearchStrategy[str]:
    pieces = st.sampled_from(good + list(HOSTILE))
    return st.sampled_from(good) | text | st.builds("".join, st.lists(pieces, max_size=4))


GATEWAY = yaml.safe_load(GATEWAY_YAML)


GOOD = {
    "interface": ["wg1", "wg-cust", "tenants0"],
    "infra_interface": ["wg0", "eth1", "ens5.100"],
    "endpoint": ["203.0.113.10:51821", "vpn.example.net:51821", "[2001:db8::1]:51821"],
    "description": ["SIP signalling", "SIP (UDP)"],
    "org": ["acme", "bravo-voip"],
    "name": ["hq", "branch-2"],
    "notes": ["Head office", "PBX: 3CX; phones behind NAT"],
}


@st.composite
def repos(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    # One field fuzzed per example, the others ordinary: most examples reach the renderers
    # instead of stopping at the first refused field.
    fuzzed = draw(st.sampled_from(sorted(GOOD)))

    def value(field: str) -> str:
        return draw(either(GOOD[field]) if field == fuzzed else st.sampled_from(GOOD[field]))

    gw = dict(GATEWAY)
    gw["interface"] = value("interface")
    gw["infra_interfaces"] = [value("infra_interface")]
    gw["endpoint"] = value("endpoint")
    services = {name: dict(spec) for name, spec in GATEWAY["services"].items()}
    services["sip"]["description"] = value("description")
    gw["services"] = services
    org, name = value("org"), value("name")
    tunnel = {"org": org, "name": name, "gateway": "cloud-1", "public_key": key((org, name)),
              "subnet": "10.20.0.4/30", "lans": ["192.168.10.0/24"], "notes": value("notes")}
    return gw, tunnel


@pytest.fixture(scope="module")
def scratch_ns() -> Iterator[str]:
    ns = f"tct-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def nft_accepts(ns: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "-c", "-f", "-"], input=script,
                          text=True, capture_output=True, check=False)


def wg_quick_strip(folder: Path, text: str) -> dict[str, list[tuple[str, str]]]:
    path = folder / "wgfuzz0.conf"
    path.write_text(text)
    path.chmod(0o600)
    out = subprocess.run(["wg-quick", "strip", str(path)], capture_output=True, text=True,
                         check=True).stdout
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line
            sections.setdefault(current, [])
        elif "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            sections[current].append((k.strip(), v.strip()))
    return sections


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(repos())
def test_each_field_is_refused_where_it_stands_or_read_back_unchanged(
        scratch_ns: str, tmp_path: Path, repo: tuple[dict[str, Any], dict[str, Any]]) -> None:
    gw, tunnel = repo
    org, name = str(tunnel["org"]), str(tunnel["name"])
    path = f"{org}/{name}.yaml" if org and name and "/" not in org + name else "x/y.yaml"
    state = load({path: yaml.safe_dump(tunnel)}, gateway=yaml.safe_dump(gw))
    event("refused" if state.problems else "rendered and read back")
    if state.problems:
        for p in state.problems:
            assert p.file in {"gateway.yaml", path} and p.line >= 1 and p.col >= 1, p
            assert p.message.strip(), p
        return
    if not state.tunnels:  # a hidden file (`acme/..yaml`) is not a tunnel file, by design
        assert any(part.startswith(".") for part in path.split("/")), path
        return
    gateway = state.gateways["cloud-1"]
    firewall = render_firewall(gateway, active_tunnels(gateway, state.tunnels), gateway.interface)
    checked = nft_accepts(scratch_ns, firewall.text)
    assert checked.returncode == 0, checked.stderr
    assert f'iifname != "{gateway.interface}"' in firewall.text
    config = cc.build(state.tunnels[0], gateway, b"\x01" * 32, key("cloud"))
    sections = wg_quick_strip(tmp_path, cc.render(config, "wg-quick"))
    assert set(sections) == {"[Interface]", "[Peer]"}  # nothing smuggled in a second section
    assert [k for k, _ in sections["[Interface]"]] == []  # Address/MTU are wg-quick's, stripped
    assert dict(sections["[Peer]"])["Endpoint"] == gateway.endpoint
