"""Customer configs that real devices accept: the RouterOS script converges when run again (a
small interpreter of the script subset we emit runs it against a model router), the QR code
decodes (zbarimg) to a config the WireGuard apps import (it has a PrivateKey when the key is
given for that render), and customer key pairs and supplied keys are handled as secrets."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from customer_kit import dual_stack_repo

from reconciler.engine import psk, wgkeys
from reconciler.lab import demo_private_keys
from reconciler.operator import customer_config as cc
from reconciler.operator.customer_keys import (
    CustomerKeyError,
    new_customer_keypair,
    parse_private_key,
    read_private_key,
)

ROOT = Path(__file__).resolve().parent.parent


def repo_with(tmp_path: Path, ident: str, **edits: str) -> Path:
    repo = tmp_path / "repo"
    if not repo.exists():
        shutil.copytree(ROOT / "tenants", repo)
    f = repo / f"{ident}.yaml"
    text = f.read_text()
    for key, value in edits.items():
        text = re.sub(rf"^{key}:.*$", f"{key}: {value}", text, flags=re.MULTILINE) \
            if re.search(rf"^{key}:", text, re.MULTILINE) else text + f"{key}: {value}\n"
    f.write_text(text)
    return repo


# ------------------------------------------------------------------ RouterOS, run twice

_ARG_RE = re.compile(r'([a-z-]+)=("(?:[^"\\]|\\.)*"|\S+)')
_FIND_RE = re.compile(r"^:local found \[(/[a-z0-9 /]+?) find where (.+)\]$")
_IF_RE = re.compile(r"^:if \(\[:len \$found\] = 0\) do=\{ (/[a-z0-9 /]+?) add (.+?) \} "
                    r"else=\{ (/[a-z0-9 /]+?) set \$found (.+) \}$")
_KEYCHECK_RE = re.compile(r'^:if \(\[/interface wireguard get \[find where name=("[^"]*")\] '
                          r'public-key\] != ("[^"]*")\) do=\{ :error "[^"]*" \}$')
_ERROR_RE = re.compile(r'^(?:\} on-error=\{ )?:error ("(?:[^"\\]|\\.)*")(?: \})?$')


def _value(text: str) -> str:
    if text.startswith('"'):
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def _args(text: str) -> dict[str, str]:
    pairs = _ARG_RE.findall(text)
    assert " ".join(f"{k}={v}" for k, v in pairs) == text.strip(), f"unparsed args: {text!r}"
    return {k: _value(v) for k, v in pairs}


class ScriptError(Exception):
    pass


class Router:
    """The few RouterOS menus our script touches, as lists of records."""

    def __init__(self, public_key: str) -> None:
        self.menus: dict[str, list[dict[str, str]]] = {}
        self.public_key = public_key  # what RouterOS generates for a new interface

    def run(self, script: str) -> None:
        """Run our script's subset; anything else in it is a test failure, so every command
        the script has is covered here (an unguarded `add` cannot slip through)."""
        found: list[int] | None = None
        last_where: tuple[str, dict[str, str]] = ("", {})
        in_do = False
        for raw in script.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line == ":do {":
                assert not in_do
                in_do, found = True, None
            elif line.startswith("} on-error={ :error ") and in_do:
                in_do = False
            elif m := _FIND_RE.match(line):
                assert in_do, "a find outside a :do block"
                menu, cond = m.group(1), m.group(2)
                where: dict[str, str] = {}
                for condition in cond.split(" and "):  # each one key=value
                    where.update(_args(condition))
                found = [i for i, rec in enumerate(self.menus.get(menu, []))
                         if all(rec.get(k) == v for k, v in where.items())]
                last_where = (menu, where)
            elif m := _IF_RE.match(line):
                assert in_do and found is not None, "add/set without a find before it"
                add_menu, add_args, set_menu, set_args = m.groups()
                assert add_menu == set_menu == last_where[0]
                added = _args(add_args)
                # What an add creates must be found by the same find next time, or a re-run
                # would add it again.
                assert all(added.get(k) == v for k, v in last_where[1].items()), (added, last_where)
                records = self.menus.setdefault(add_menu, [])
                if not found:
                    rec = dict(added)
                    if add_menu == "/interface wireguard":
                        rec["public-key"] = self.public_key
                    records.append(rec)
                else:
                    for i in found:
                        records[i].update(_args(set_args))
            elif m := _KEYCHECK_RE.match(line):
                name, key = _value(m.group(1)), _value(m.group(2))
                ifaces = [r for r in self.menus.get("/interface wireguard", []) if r["name"] == name]
                if ifaces[0]["public-key"] != key:
                    raise ScriptError("public key mismatch")
            elif m := _ERROR_RE.match(line):
                raise ScriptError(_value(m.group(1)))
            else:
                raise AssertionError(f"command the test router does not know: {line!r}")
        assert not in_do

    def snapshot(self) -> dict[str, Any]:
        return {k: [dict(r) for r in v] for k, v in self.menus.items()}


@pytest.mark.parametrize("dual", [False, True], ids=["ipv4", "dual-stack"])
@pytest.mark.parametrize("ident", ["bluebird-telecom/main", "acme-voip/hq"])
def test_routeros_script_converges_when_run_again(secret_dir: Path, tmp_path: Path,
                                                  ident: str, dual: bool) -> None:
    # repo_with() below edits this same copy, so the rotated script keeps its IPv6 lines
    repo = dual_stack_repo(tmp_path / "repo") if dual else ROOT / "tenants"
    config = cc.load(repo, ident, secret_dir=secret_dir)
    script = cc.render(config, "mikrotik")
    router = Router(config.customer_public_key)
    router.run(script)
    first = router.snapshot()
    assert len(first["/interface wireguard peers"]) == 1
    assert first["/interface wireguard peers"][0]["preshared-key"] == config.preshared_key
    assert len(first["/ip route"]) == len(config.allowed_ips)
    if dual:
        assert config.customer_address6 is not None
        assert [r["address"] for r in first["/ipv6 address"]] == [str(config.customer_address6)]
        assert [r["dst-address"] for r in first["/ipv6 route"]] == \
            [str(n) for n in config.allowed_ips6] and len(config.allowed_ips6) == 2
        assert first["/interface wireguard peers"][0]["allowed-address"] == \
            ",".join(str(n) for n in config.peer_allowed_ips)
    else:
        assert "/ipv6 address" not in first and "/ipv6 route" not in first
    router.run(script)
    assert router.snapshot() == first, "a second run changed the router"

    # ops bump psk_rotation: the same router, the new script, one peer with the new key.
    repo = repo_with(tmp_path, ident, psk_rotation="1")
    rotated = cc.load(repo, ident, secret_dir=secret_dir)
    assert rotated.preshared_key != config.preshared_key
    router.run(cc.render(rotated, "mikrotik"))
    after = router.snapshot()
    peers = after["/interface wireguard peers"]
    assert len(peers) == 1 and peers[0]["preshared-key"] == rotated.preshared_key
    org, name = ident.split("/")
    assert rotated.preshared_key == psk.derive_psk(
        psk.read_host_secret(secret_dir / "psk.secret"), org, name, 1)
    assert {k: v for k, v in after.items() if k != "/interface wireguard peers"} == \
        {k: v for k, v in first.items() if k != "/interface wireguard peers"}


@pytest.mark.parametrize("dual,steps", [(False, 5), (True, 8)], ids=["ipv4", "dual-stack"])
def test_every_routeros_add_is_guarded_and_every_step_handles_errors(
        secret_dir: Path, tmp_path: Path, dual: bool, steps: int) -> None:
    repo = dual_stack_repo(tmp_path / "repo") if dual else ROOT / "tenants"
    script = cc.render(cc.load(repo, "bluebird-telecom/main", secret_dir=secret_dir), "mikrotik")
    lines = [ln.strip() for ln in script.splitlines() if ln.strip() and not ln.startswith("#")]
    adds = [i for i, ln in enumerate(lines) if " add " in ln]
    assert len(adds) == steps  # dual stack: one /ipv6 address, two /ipv6 routes more
    for i in adds:
        assert _IF_RE.match(lines[i]) and _FIND_RE.match(lines[i - 1]), lines[i]
        assert lines[i - 2] == ":do {" and lines[i + 1].startswith("} on-error={ :error "), lines[i]
    assert script.count(":do {") == script.count("} on-error={") == steps


def test_routeros_script_stops_at_a_foreign_router_key(secret_dir: Path) -> None:
    config = cc.load(ROOT / "tenants", "bluebird-telecom/main", secret_dir=secret_dir)
    router = Router(wgkeys.keypair()[1])
    with pytest.raises(ScriptError, match="public key mismatch"):
        router.run(cc.render(config, "mikrotik"))
    assert "/interface wireguard peers" not in router.menus, "nothing after the check ran"


# ------------------------------------------------------------------ QR code and keys


def zbar(png: bytes, folder: Path) -> str:
    path = folder / "qr.png"
    path.write_bytes(png)
    return subprocess.run(["zbarimg", "-q", "--raw", str(path)], capture_output=True, text=True,
                          check=True).stdout.rstrip("\n")


def test_qr_with_the_customers_key_decodes_to_an_importable_config(secret_dir: Path,
                                                                   tmp_path: Path) -> None:
    ident = "acme-voip/hq"
    private = demo_private_keys()[ident]  # demo-only key whose public half is in tenants/
    config = cc.load(ROOT / "tenants", ident, secret_dir=secret_dir)
    decoded = zbar(cc.render_qr(config, private_key=private).png, tmp_path)
    section = cc.interface_section(decoded)
    assert section["PrivateKey"] == private
    assert wgkeys.public_key(section["PrivateKey"]) == config.customer_public_key
    assert section["Address"] == "10.20.0.6/30"
    assert decoded == cc.render(config, "wg-quick", compact=True, private_key=private).rstrip("\n")
    assert "PresharedKey = " + config.preshared_key in decoded
    # Without the key the code documents the config, and the apps would refuse it.
    assert "PrivateKey" not in cc.interface_section(zbar(cc.render_qr(config).png, tmp_path))
    # The full file with the key says so, and keeps its comments.
    full = cc.render(config, "wg-quick", private_key=private)
    assert f"PrivateKey = {private}" in full and "this router's private key:" in full


def test_a_key_that_is_not_the_tunnels_is_refused_without_echoing_it(secret_dir: Path) -> None:
    config = cc.load(ROOT / "tenants", "acme-voip/hq", secret_dir=secret_dir)
    stranger = wgkeys.generate_private_key()
    with pytest.raises(cc.CustomerConfigError, match="does not belong to acme-voip/hq") as exc:
        cc.render_qr(config, private_key=stranger)
    assert stranger not in str(exc.value)
    with pytest.raises(cc.CustomerConfigError, match="not base64"):
        cc.render(config, "wg-quick", private_key="not a key!")
    for fmt in ("mikrotik", "gdms"):
        with pytest.raises(cc.CustomerConfigError, match="only into the wg-quick and qr"):
            cc.render(config, fmt, private_key=demo_private_keys()["acme-voip/hq"])


def test_new_customer_keypair_is_fresh_and_hides_its_private_half() -> None:
    a, b = new_customer_keypair(), new_customer_keypair()
    assert a.private_key != b.private_key
    assert wgkeys.public_key(a.private_key) == a.public_key
    assert a.private_key not in repr(a) and a.public_key in repr(a)


def test_private_key_is_read_from_a_file_or_a_stream(tmp_path: Path) -> None:
    private = wgkeys.generate_private_key()
    f = tmp_path / "key"
    f.write_text(private + "\n")
    assert read_private_key(f) == private
    assert read_private_key(io.StringIO(f"  {private}\n")) == private
    for bad in ("", "a\nb", base64.b64encode(b"x" * 31).decode(), private[:-2] + "B="):
        with pytest.raises(CustomerKeyError) as exc:
            parse_private_key(bad)
        assert bad.strip() == "" or bad not in str(exc.value)
    with pytest.raises(CustomerKeyError, match="No such file"):
        read_private_key(tmp_path / "missing")
