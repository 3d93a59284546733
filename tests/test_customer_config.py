"""Customer-side configs: every format, the two production bugs (cloud address, endpoint in
AllowedIPs), refusals, and a real lab router brought up from the generated wg-quick file."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from dataclasses import dataclass, replace
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, ip_interface
from pathlib import Path

import png
import pytest
import qrcode
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.engine import psk, wgkeys
from reconciler.operator import customer_config as cc
from reconciler.repo.state import load_repo

ROOT = Path(__file__).resolve().parent.parent
TENANTS = ROOT / "tenants"


@dataclass(frozen=True)
class WgQuickParts:
    setconf: str  # what `wg-quick strip` prints, i.e. what wg-quick hands to `wg setconf`
    addresses: tuple[IPv4Interface | IPv6Interface, ...]  # wg-quick adds them with `ip address`
    mtu: int | None


def wg_quick_strip(text: str, folder: Path) -> WgQuickParts:
    """The real `wg-quick strip` judges the file; Address and MTU (which it strips and applies
    itself) are read from the [Interface] section."""
    path = folder / "wgtest0.conf"  # wg-quick wants <interface>.conf
    path.write_text(text)
    path.chmod(0o600)
    stripped = subprocess.run(["wg-quick", "strip", str(path)], capture_output=True, text=True,
                              check=True).stdout
    values = [ln.split("=", 1) for ln in text.split("[Peer]")[0].splitlines() if "=" in ln
              and not ln.lstrip().startswith("#")]
    addresses = tuple(ip_interface(a.strip()) for k, v in values if k.strip() == "Address"
                      for a in v.split(","))
    mtu = next((int(v) for k, v in values if k.strip() == "MTU"), None)
    return WgQuickParts(stripped, addresses, mtu)


def _repo_copy(tmp_path: Path, **gateway_edits: str) -> Path:
    """tenants/ with some gateway.yaml lines replaced (key -> full new line, '' deletes)."""
    repo = tmp_path / "repo"
    shutil.copytree(TENANTS, repo)
    gw = repo / "gateway.yaml"
    lines = []
    for line in gw.read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in gateway_edits:
            if gateway_edits[key]:
                lines.append(gateway_edits.pop(key))
            continue
        lines.append(line)
    lines += [v for v in gateway_edits.values() if v]
    gw.write_text("\n".join(lines) + "\n")
    return repo


def test_wg_quick_has_every_value(secret_dir: Path, tmp_path: Path) -> None:
    config = cc.load(TENANTS, "acme-voip/hq", secret_dir=secret_dir)
    text = cc.render(config, "wg-quick")
    parts = wg_quick_strip(text, tmp_path)
    assert parts.addresses == (IPv4Interface("10.20.0.6/30"),) and parts.mtu == 1420
    expected_psk = psk.derive_psk(psk.read_host_secret(secret_dir / "psk.secret"),
                                  "acme-voip", "hq", 0)
    peer = dict(ln.split(" = ", 1) for ln in parts.setconf.splitlines()
                if " = " in ln and not ln.startswith("#"))
    assert peer == {
        "PublicKey": load_repo(TENANTS).gateways["cloud-1"].public_key,
        "PresharedKey": expected_psk,
        "Endpoint": "203.0.113.10:51821",
        "AllowedIPs": "10.20.0.1/32",
        "PersistentKeepalive": "25",
    }
    assert "# PrivateKey = <this router's private key>" in text  # the customer's own key


@pytest.mark.parametrize("ident", ["acme-voip/hq", "bluebird-telecom/main", "carrot-dental/clinic"])
def test_cloud_address_is_the_gateway_address_whatever_the_subnet(secret_dir: Path,
                                                                  ident: str) -> None:
    config = cc.load(TENANTS, ident, secret_dir=secret_dir)
    assert str(config.cloud_address) == "10.20.0.1"
    assert config.allowed_ips == (IPv4Network("10.20.0.1/32"),)
    # the customer's .2 is in its own /30, the cloud address is not: hence the explicit route
    assert config.customer_address.ip not in IPv4Network("10.20.0.0/30")
    assert "10.20.0.1/32" in cc.render(config, "mikrotik")


def test_routed_ranges_are_added_and_the_endpoint_never(secret_dir: Path, tmp_path: Path) -> None:
    repo = _repo_copy(tmp_path, routed_ranges="routed_ranges: [172.31.5.0/24]")
    config = cc.load(repo, "acme-voip/hq", secret_dir=secret_dir)
    assert config.allowed_ips == (IPv4Network("10.20.0.1/32"), IPv4Network("172.31.5.0/24"))
    wg = cc.render(config, "wg-quick")
    assert "AllowedIPs = 10.20.0.1/32, 172.31.5.0/24" in wg
    rsc = cc.render(config, "mikrotik")
    assert "allowed-address=10.20.0.1/32,172.31.5.0/24" in rsc
    assert ('/ip route add dst-address=172.31.5.0/24 comment="tunnelctl cloud-1" '
            'gateway="wg-cloud-1"') in rsc
    gdms = cc.render(config, "gdms")
    values = [*re.findall(r"^AllowedIPs = (.*)$", wg, re.MULTILINE),
              *re.findall(r"allowed-address=(\S+)", rsc),
              *re.findall(r"Allowed IPs: (.*)$", gdms, re.MULTILINE)]
    assert len(values) == 4  # the RouterOS script's add and its re-run set
    for value in values:
        assert value.replace(" ", "") == "10.20.0.1/32,172.31.5.0/24"  # never 203.0.113.10


def test_routed_range_covering_the_endpoint_is_refused(secret_dir: Path, tmp_path: Path) -> None:
    # The repo validator already rejects such a gateway file; the error reaches the operator.
    repo = _repo_copy(tmp_path, routed_ranges="routed_ranges: [203.0.113.0/24]")
    with pytest.raises(cc.CustomerConfigError, match="gateway.yaml.*public endpoint"):
        cc.load(repo, "acme-voip/hq", secret_dir=secret_dir)
    # And the customer-config stage refuses it on its own (defence in depth).
    gateway = load_repo(TENANTS).gateways["cloud-1"]
    looped = gateway.model_copy(update={"routed_ranges": (IPv4Network("203.0.113.0/24"),)})
    with pytest.raises(cc.CustomerConfigError, match="would cover the endpoint 203.0.113.10"):
        cc.customer_allowed_ips(looped)


def test_renderer_assertion_catches_an_endpoint_in_allowed_ips(secret_dir: Path) -> None:
    config = cc.load(TENANTS, "acme-voip/hq", secret_dir=secret_dir)
    looped = replace(config, allowed_ips=(*config.allowed_ips, IPv4Network("203.0.113.10/32")))
    for fmt in cc.TEXT_FORMATS:
        with pytest.raises(AssertionError, match="203.0.113.10"):
            cc.render(looped, fmt)


def test_cloud_key_from_private_key_when_gateway_lacks_it(secret_dir: Path,
                                                          tmp_path: Path) -> None:
    repo = _repo_copy(tmp_path, public_key="")
    with pytest.raises(cc.CustomerConfigError, match="run 'tunnelctl bootstrap'"):
        cc.load(repo, "acme-voip/hq", secret_dir=secret_dir)
    private, public = wgkeys.keypair()
    (secret_dir / "private.key").write_text(private + "\n")
    config = cc.load(repo, "acme-voip/hq", secret_dir=secret_dir)
    assert config.cloud_public_key == public
    for fmt in cc.TEXT_FORMATS:
        assert private not in cc.render(config, fmt)


@pytest.mark.parametrize("ident,word", [("carrot-dental/branch", "disabled")])
def test_inactive_tunnels_are_refused(secret_dir: Path, ident: str, word: str) -> None:
    with pytest.raises(cc.CustomerConfigError, match=f"is {word}"):
        cc.load(TENANTS, ident, secret_dir=secret_dir)


def test_revoked_tunnel_is_refused(secret_dir: Path, tmp_path: Path) -> None:
    repo = _repo_copy(tmp_path)
    f = repo / "bluebird-telecom" / "main.yaml"
    f.write_text(f.read_text().replace("status: active", "status: revoked\nrevoked_at: 2024-01-02"))
    with pytest.raises(cc.CustomerConfigError, match="is revoked"):
        cc.load(repo, "bluebird-telecom/main", secret_dir=secret_dir)


def test_unknown_tunnel_and_missing_secret_are_clear(secret_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(cc.CustomerConfigError, match="tunnels of acme-voip: acme-voip/hq"):
        cc.load(TENANTS, "acme-voip/nope", secret_dir=secret_dir)
    with pytest.raises(cc.CustomerConfigError, match="ORG/NAME"):
        cc.load(TENANTS, "acme-voip", secret_dir=secret_dir)
    with pytest.raises(cc.CustomerConfigError, match="psk.secret does not exist"):
        cc.load(TENANTS, "acme-voip/hq", secret_dir=tmp_path / "nowhere")
    with pytest.raises(cc.CustomerConfigError, match="belongs to gateway cloud-1"):
        cc.load(TENANTS, "acme-voip/hq", gateway="cloud-2", secret_dir=secret_dir)


def test_mikrotik_script(secret_dir: Path) -> None:
    config = cc.load(TENANTS, "bluebird-telecom/main", secret_dir=secret_dir)
    rsc = cc.render(config, "mikrotik")
    adds = [ln.split(" add ", 1)[1].split(" } else={")[0] for ln in rsc.splitlines()
            if " add " in ln and not ln.startswith("#")]
    assert adds[0] == 'name="wg-cloud-1" mtu=1420 comment="tunnelctl bluebird-telecom/main"'
    assert f'public-key] != "{config.customer_public_key}"' in rsc
    assert adds[1] == (
        'interface="wg-cloud-1" comment="tunnelctl cloud-1" '
        f'public-key="{config.cloud_public_key}" preshared-key="{config.preshared_key}" '
        'endpoint-address="203.0.113.10" endpoint-port=51821 allowed-address=10.20.0.1/32 '
        'persistent-keepalive=25s')
    assert adds[2].endswith("address=10.20.0.10/30")
    assert adds[3].startswith("dst-address=10.20.0.1/32 ")
    # no routed LAN: the router must masquerade its LAN into the tunnel
    assert adds[4].startswith('chain=srcnat out-interface="wg-cloud-1" action=masquerade')
    routed = cc.render(cc.load(TENANTS, "acme-voip/hq", secret_dir=secret_dir), "mikrotik")
    assert "masquerade" not in routed.replace("do not masquerade", "")


@pytest.mark.parametrize("value,literal", [
    ("wg-cloud-1", '"wg-cloud-1"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("$(x) ?y \\z", '"\\$(x) \\?y \\\\z"'),
])
def test_routeros_strings_are_quoted_and_escaped(value: str, literal: str) -> None:
    assert cc.routeros_string(value) == literal


def test_routeros_strings_refuse_line_breaks() -> None:
    with pytest.raises(cc.CustomerConfigError):
        cc.routeros_string("a\n/system reset-configuration")


def test_gdms_steps_are_numbered_and_filled(secret_dir: Path) -> None:
    config = cc.load(TENANTS, "acme-voip/hq", secret_dir=secret_dir)
    text = cc.render(config, "gdms")
    numbers = [int(m) for m in re.findall(r"^ (\d+)\. ", text, re.MULTILINE)]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 15
    for value in (config.customer_public_key, config.cloud_public_key, config.preshared_key,
                  "Local address (tunnel IP): 10.20.0.6/30", "netmask 255.255.255.252",
                  "Endpoint address: 203.0.113.10", "Endpoint port: 51821",
                  "Allowed IPs: 10.20.0.1/32", "Persistent keepalive: 25", "MTU: 1420",
                  "NAT: off", "GDMS Networking", "VPN -> WireGuard"):
        assert value in text, value
    assert "{{" not in text and "}}" not in text


def test_qr_png_encodes_the_compact_wg_quick_config(secret_dir: Path, tmp_path: Path) -> None:
    config = cc.load(TENANTS, "acme-voip/hq", secret_dir=secret_dir)
    qr = cc.render_qr(config)
    compact = cc.render(config, "wg-quick", compact=True)
    assert config.preshared_key in compact and "AllowedIPs = 10.20.0.1/32" in compact
    # Pixel check without a decoder: the PNG's modules equal an independent encoding of the text.
    width, height, rows, _ = png.Reader(bytes=qr.png).read()
    pixels = [list(r) for r in rows]
    ref = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_L, border=2)
    ref.add_data(compact)
    ref.make(fit=True)
    matrix = ref.get_matrix()
    box = width // len(matrix)
    assert width == height == box * len(matrix)
    sampled = [[pixels[y * box + box // 2][x * box + box // 2] == 0 for x in range(len(matrix))]
               for y in range(len(matrix))]
    assert sampled == matrix
    assert len(qr.terminal.splitlines()) > 20
    if shutil.which("zbarimg"):  # a real decoder, when installed
        path = tmp_path / "qr.png"
        path.write_bytes(qr.png)
        out = subprocess.run(["zbarimg", "-q", "--raw", str(path)], capture_output=True,
                             text=True, check=True).stdout
        assert out.rstrip("\n") == compact.rstrip("\n")


def test_cli_writes_private_files(secret_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "hq.conf"
    res = runner.invoke(main, ["customer-config", "acme-voip/hq", "--repo", str(TENANTS),
                               "--secret-dir", str(secret_dir), "--out-file", str(out)])
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and "[Peer]" in out.read_text()
    png_path = tmp_path / "hq.png"
    res = runner.invoke(main, ["customer-config", "acme-voip/hq", "-o", "qr", "--repo",
                               str(TENANTS), "--secret-dir", str(secret_dir), "-f", str(png_path)])
    assert res.exit_code == 0, res.output
    assert png_path.read_bytes().startswith(b"\x89PNG") and "█" in res.output
    assert stat.S_IMODE(png_path.stat().st_mode) == 0o600
    res = runner.invoke(main, ["customer-config", "carrot-dental/branch", "--repo", str(TENANTS),
                               "--secret-dir", str(secret_dir)])
    assert res.exit_code == 1 and "is disabled" in res.output


def test_cli_qr_with_the_customers_key_from_stdin_and_nothing_written_by_default(
        secret_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reconciler.lab import demo_private_keys

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    key = demo_private_keys()["acme-voip/hq"]
    png = tmp_path / "qr.png"
    res = CliRunner().invoke(main, ["customer-config", "acme-voip/hq", "-o", "qr", "--repo",
                                    str(TENANTS), "--secret-dir", str(secret_dir),
                                    "--private-key-file", "-", "-f", str(png)],
                             input=key + "\n")
    assert res.exit_code == 0, res.output
    decoded = subprocess.run(["zbarimg", "-q", "--raw", str(png)], capture_output=True,
                             text=True, check=True).stdout
    assert f"PrivateKey = {key}" in decoded and key not in res.output
    png.unlink()
    res = CliRunner().invoke(main, ["customer-config", "acme-voip/hq", "-o", "qr", "--repo",
                                    str(TENANTS), "--secret-dir", str(secret_dir)])
    assert res.exit_code == 0 and "mobile apps refuse it" in res.output
    assert list(cwd.iterdir()) == []  # no secret dropped into the current directory
    res = CliRunner().invoke(main, ["customer-config", "bluebird-telecom/main", "--repo",
                                    str(TENANTS), "--secret-dir", str(secret_dir),
                                    "--private-key-file", "-"], input=key + "\n")
    assert res.exit_code == 1 and "does not belong to bluebird-telecom/main" in res.output
    assert key not in res.output


# ---- a real customer router configured from the generated file ------------------------------


@pytest.mark.lab
def test_wg_quick_output_brings_up_a_real_lab_router(tmp_path: Path) -> None:
    from reconciler.engine.cycle import reconcile
    from reconciler.engine.runner import Runner
    from reconciler.lab import Lab, demo_private_keys, udp_probe

    ident = "acme-voip/hq"
    # In the lab, router 0 reaches the cloud at 198.18.0.1: that is this gateway's "public" IP.
    repo = _repo_copy(tmp_path, endpoint="endpoint: 198.18.0.1:51821")
    with Lab(repo, routers=[ident], services=True) as lab:
        result = reconcile(load_repo(repo), lab.target())
        assert result.ok, result.error
        router = lab.routers[ident]
        assert router.index == 0 and str(router.cloud_wan_address) == "198.18.0.1"
        # Forget everything the lab configured on the router: only our file may bring it up.
        r = Runner(router.netns)
        r.run(["wg", "setconf", router.interface, "/dev/stdin"], stdin="[Interface]\n")
        r.run(["ip", "addr", "flush", "dev", router.interface])
        assert lab.latest_handshake(ident) == 0

        text = cc.render(cc.load(repo, ident, secret_dir=lab.secret_dir), "wg-quick")
        placeholder = "# PrivateKey = <this router's private key>"
        assert text.count(placeholder) == 1
        text = text.replace(placeholder, f"PrivateKey = {demo_private_keys()[ident]}")
        parts = wg_quick_strip(text, tmp_path)  # what wg-quick would do: strip, setconf, then ip
        r.run(["wg", "setconf", router.interface, "/dev/stdin"], stdin=parts.setconf)
        batch = [f"addr add {a} dev {router.interface}" for a in parts.addresses]
        batch.append(f"link set {router.interface} mtu {parts.mtu} up")
        allowed = next(ln.split("=", 1)[1] for ln in parts.setconf.splitlines()
                       if ln.startswith("AllowedIPs"))
        batch += [f"route replace {n.strip()} dev {router.interface}" for n in allowed.split(",")]
        r.run(["ip", "-batch", "-"], stdin="".join(c + "\n" for c in batch))

        assert lab.wait_handshake(ident, timeout=10), "no handshake from the generated config"
        assert udp_probe(router.netns, "10.20.0.1", 5060, timeout=2.0)
        assert router.host_netns is not None  # and a phone on the routed LAN gets through too
        assert udp_probe(router.host_netns, "10.20.0.1", 5060, timeout=2.0)


def test_an_export_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    link = tmp_path / "export.conf"
    link.symlink_to(victim)
    cc.write_private_file(link, b"PresharedKey = secret\n")
    assert victim.read_text() == "root's file\n"
    assert not link.is_symlink() and link.read_bytes() == b"PresharedKey = secret\n"
    assert stat.S_IMODE(link.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.conf", "victim"]


def test_templates_cannot_be_swapped_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    from reconciler.engine.templates import template_dir

    monkeypatch.setenv("TUNNELCTL_TEMPLATES", str(tmp_path))
    assert template_dir() != tmp_path and (template_dir() / "wg-interface.conf.j2").is_file()
