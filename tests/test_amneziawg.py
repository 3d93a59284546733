"""AmneziaWG: the gateway's obfuscation block is validated against the protocol's rules at the
offending line, and both sides (the gateway's interface file, every customer format) carry
exactly its values, parsed back from the rendered text. No AmneziaWG implementation installs
here, so golden files pin the rendered syntax. Regenerate them after an intended change with:
UPDATE_GOLDEN=1 pytest tests/test_amneziawg.py
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from repo_kit import GATEWAY_YAML, load

from reconciler.engine.render import render_host
from reconciler.operator import customer_config as cc
from reconciler.repo.model import AmneziaWG, Gateway
from reconciler.repo.state import load_repo

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "amneziawg"
SECRET = bytes(range(32))
GW_PRIV = "EK0jUTd3Ge0AE4qXgHX01pRn/jhcQx/JMdQlbE3Xums="  # demo-only key (reconciler/lab/data)
VALID = {"jc": "4", "jmin": "40", "jmax": "70", "s1": "52", "s2": "107",
         "h1": "1234567891", "h2": "2345678912", "h3": "3456789123", "h4": "4123456789"}
AWG_LINES = (("Jc", "4"), ("Jmin", "40"), ("Jmax", "70"), ("S1", "52"), ("S2", "107"),
             ("H1", "1234567891"), ("H2", "2345678912"), ("H3", "3456789123"),
             ("H4", "4123456789"))


def block(**over: str | None) -> str:
    values = {**VALID, **over}
    return "amneziawg:\n" + "".join(f"  {k}: {v}\n" for k, v in values.items() if v is not None)


def gateway_problems(text: str) -> list[tuple[int, int, str]]:
    state = load({}, gateway=GATEWAY_YAML + text)
    return [(p.line, p.col, p.message) for p in state.problems if p.file == "gateway.yaml"]


FIRST = GATEWAY_YAML.count("\n") + 1  # the line of "amneziawg:"


def line_of(key: str) -> int:
    return FIRST + 1 + list(VALID).index(key)


def col_of(key: str) -> int:
    return len(f"  {key}: ") + 1


def test_a_valid_block_loads_and_keeps_awg_quick_order() -> None:
    assert gateway_problems(block()) == []
    state = load({}, gateway=GATEWAY_YAML + block())
    awg = state.gateways["cloud-1"].amneziawg
    assert awg is not None and awg.config_lines() == AWG_LINES


# (key, bad value, words the message must contain)
INVALID = [
    ("jc", "0", "Jc must be 1-128"),
    ("jc", "129", "Jc must be 1-128"),
    ("jc", "true", "expected a whole number"),
    ("jmin", "1280", "Jmin must be 0-1279"),
    ("jmax", "1281", "Jmax must be 1-1280"),
    ("jmax", "40", "Jmax (40) must be greater than Jmin (40)"),
    ("jmax", "39", "greater than Jmin"),
    ("s1", "1133", "S1 must be 0-1132"),
    ("s1", "52.0", "expected a whole number"),
    ("s2", "1189", "S2 must be 0-1188"),
    ("s2", "108", "S1 + 56 equals S2"),
    ("h1", "1", "1-4 are WireGuard's own message types"),
    ("h4", "4", "1-4 are WireGuard's own message types"),
    ("h2", "0", "must be 5-4294967295"),
    ("h3", "4294967296", "must be 5-4294967295"),
    ("h2", "1234567891", "H2 equals H1"),
    ("h4", "2345678912", "H4 equals H2"),
    ("h4", "'12345'", "expected a whole number"),
]


@pytest.mark.parametrize("key,value,words", INVALID, ids=[f"{k}={v}" for k, v, _ in INVALID])
def test_each_invalid_parameter_is_refused_at_its_line(key: str, value: str, words: str) -> None:
    found = gateway_problems(block(**{key: value}))
    assert found == [(line_of(key), col_of(key), found[0][2])], found
    assert words in found[0][2] and f"amneziawg.{key}" in found[0][2], found


def test_missing_and_unknown_keys_are_located() -> None:
    found = gateway_problems(block(h4=None))
    assert found and found[0][:2] == (FIRST + 1, 3) and "missing required key 'h4'" in found[0][2]
    found = gateway_problems(block() + "  s3: 20\n")
    assert found and found[0][:2] == (line_of("h4") + 1, 3) and "unknown key 's3'" in found[0][2]


# ------------------------------------------------------------------------ both sides


@pytest.fixture
def awg_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "tenants", repo)
    with (repo / "gateway.yaml").open("a") as fh:
        fh.write(block())
    return repo


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file"


def gateway_config(repo: Path, tmp_path: Path) -> str:
    state = load_repo(repo)
    _, secrets = render_host(state.gateways["cloud-1"], state.tunnels, interface="wg1",
                             private_key=GW_PRIV, host_secret=SECRET,
                             config_path=tmp_path / "wg1.conf")
    assert secrets.config_text is not None
    return secrets.config_text


def test_gateway_interface_file_carries_the_block_in_awg_quick_syntax(awg_repo: Path,
                                                                      tmp_path: Path) -> None:
    text = gateway_config(awg_repo, tmp_path)
    golden("gateway-wg1.conf", text)
    section = cc.interface_section(text)
    assert [(k, section[k]) for k, _ in AWG_LINES] == list(AWG_LINES)
    assert section["PrivateKey"] == GW_PRIV and section["ListenPort"] == "51821"
    # The keys belong to [Interface] only: none leaks into a [Peer] section.
    peers = text.split("[Peer]", 1)[1]
    assert not any(line.startswith(k + " ") for line in peers.splitlines() for k, _ in AWG_LINES)
    # Without the block the file is plain wg-quick, byte for byte as before.
    plain = gateway_config(ROOT / "tenants", tmp_path)
    assert not set(cc.interface_section(plain)) & set(cc.AWG_KEYS)
    assert text.replace("".join(f"{k} = {v}\n" for k, v in AWG_LINES), "").replace(
        "# AmneziaWG obfuscation (gateway.yaml amneziawg:); every customer config carries the "
        "same values.\n", "") == plain


@pytest.mark.parametrize("fmt", cc.TEXT_FORMATS)
def test_every_customer_format_carries_the_gateways_values(awg_repo: Path, secret_dir: Path,
                                                           tmp_path: Path, fmt: str) -> None:
    config = cc.load(awg_repo, "acme-voip/hq", secret_dir=secret_dir)
    text = cc.render(config, fmt)
    ext = {"wg-quick": "conf", "mikrotik": "rsc", "gdms": "txt"}[fmt]
    golden(f"customer-acme-voip-hq.{ext}", text)
    gateway_side = {k: v for k, v in cc.interface_section(gateway_config(awg_repo, tmp_path)).items()
                    if k in cc.AWG_KEYS}
    assert cc.obfuscation_values(text, fmt) == gateway_side == dict(AWG_LINES)


def test_customer_wg_quick_keys_are_in_its_interface_section(awg_repo: Path,
                                                              secret_dir: Path) -> None:
    config = cc.load(awg_repo, "acme-voip/hq", secret_dir=secret_dir)
    for compact in (False, True):
        section = cc.interface_section(cc.render(config, "wg-quick", compact=compact))
        assert {k: section[k] for k, _ in AWG_LINES} == dict(AWG_LINES)
        assert section["Address"] == "10.20.0.6/30"
    text = cc.render(config, "wg-quick")
    assert "awg-quick up wg-cloud-1" in text and "/etc/amnezia/amneziawg/" in text


def test_routeros_says_it_has_no_amneziawg_and_stops(awg_repo: Path, secret_dir: Path) -> None:
    rsc = cc.render(cc.load(awg_repo, "acme-voip/hq", secret_dir=secret_dir), "mikrotik")
    assert "Stock RouterOS has no AmneziaWG" in rsc
    commands = [ln for ln in rsc.splitlines() if ln.strip() and not ln.startswith("#")]
    assert commands[0].startswith(':error "gateway cloud-1 uses AmneziaWG'), commands[0]


def test_a_text_whose_values_differ_is_refused(awg_repo: Path, secret_dir: Path) -> None:
    config = cc.load(awg_repo, "acme-voip/hq", secret_dir=secret_dir)
    for fmt in cc.TEXT_FORMATS:
        text = cc.render(config, fmt)
        cc.check_obfuscation_matches(text, fmt, config)
        for broken in (text.replace("S2 = 107", "S2 = 108"),
                       text.replace("H4 = 4123456789", "H4 = 4123456788"),
                       text.replace("Jc = 4\n", "")):
            with pytest.raises(cc.CustomerConfigError, match="differ from the gateway's"):
                cc.check_obfuscation_matches(broken, fmt, config)
        with pytest.raises(cc.CustomerConfigError, match="twice"):
            cc.check_obfuscation_matches(text.replace("Jc = 4", "Jc = 4\nJc = 4"), fmt, config)
    # A plain gateway: any obfuscation line in a customer text is a mismatch too.
    plain = replace(config, amneziawg=None)
    with pytest.raises(cc.CustomerConfigError, match="differ"):
        cc.check_obfuscation_matches(cc.render(config, "wg-quick"), "wg-quick", plain)


def test_a_customer_side_rendered_from_another_block_is_refused(awg_repo: Path,
                                                                 secret_dir: Path) -> None:
    """The check compares the customer text with the gateway's own template output, so a
    customer side that diverged in any way (here: rendered from another block) never passes."""
    config = cc.load(awg_repo, "acme-voip/hq", secret_dir=secret_dir)
    other = AmneziaWG.model_validate({**{k: int(v) for k, v in VALID.items()}, "s1": 53})
    diverged = cc.render(replace(config, amneziawg=other), "wg-quick")
    assert "S1 = 53" in diverged
    with pytest.raises(cc.CustomerConfigError, match="differ from the gateway's"):
        cc.check_obfuscation_matches(diverged, "wg-quick", config)


def test_gateway_model_without_block_is_unchanged() -> None:
    gw = load_repo(ROOT / "tenants").gateways["cloud-1"]
    assert isinstance(gw, Gateway) and gw.amneziawg is None
    assert cc.gateway_obfuscation(None) == {}
