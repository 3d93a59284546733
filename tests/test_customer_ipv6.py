"""IPv6 in every customer config format: a tunnel with subnet6 on a dual-stack gateway gets both
families (wg-quick/awg-quick, QR, RouterOS, GDMS), judged by the real `wg-quick strip` and one
real `wg-quick up` in a throwaway namespace; every IPv4-only render stays byte for byte what it
was before IPv6 existed (golden files written before the templates changed).
Regenerate the golden files after an intended change with:
UPDATE_GOLDEN=1 pytest tests/test_customer_ipv6.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from reconciler.operator import customer_config as cc

ROOT = Path(__file__).resolve().parent.parent
TENANTS = ROOT / "tenants"
GOLDEN = Path(__file__).resolve().parent / "golden" / "customer"
V4_TUNNELS = ("acme-voip/hq", "bluebird-telecom/main", "carrot-dental/clinic")


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file"


def every_format(config: cc.CustomerConfig) -> str:
    """All text formats and the QR's compact text of one config, in one file."""
    parts = [(fmt, cc.render(config, fmt)) for fmt in cc.TEXT_FORMATS]
    parts.append(("qr (compact wg-quick)", cc.render(config, "wg-quick", compact=True)))
    return "".join(f"==== {name} ====\n{text}" for name, text in parts)


def edit_gateway(repo: Path, extra: str) -> None:
    gw = repo / "gateway.yaml"
    gw.write_text(gw.read_text() + extra)


@pytest.fixture
def v4_routed_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "v4repo"
    shutil.copytree(TENANTS, repo)
    edit_gateway(repo, "routed_ranges: [172.31.5.0/24]\n")
    return repo


@pytest.mark.parametrize("ident", V4_TUNNELS)
def test_ipv4_only_tunnels_render_as_before(secret_dir: Path, ident: str) -> None:
    config = cc.load(TENANTS, ident, secret_dir=secret_dir)
    golden(f"v4-{ident.replace('/', '-')}.txt", every_format(config))


def test_ipv4_only_tunnel_with_routed_ranges_renders_as_before(secret_dir: Path,
                                                               v4_routed_repo: Path) -> None:
    config = cc.load(v4_routed_repo, "acme-voip/hq", secret_dir=secret_dir)
    golden("v4-routed-acme-voip-hq.txt", every_format(config))
