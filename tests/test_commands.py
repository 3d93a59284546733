"""Commands stage: plan -> the exact commands apply runs, pinned by golden files.

The golden files in tests/golden/commands/ hold the redacted form (what `apply --dry-run`
prints), for the control-socket path and the `wg set` path. Regenerate them after an intended
change with: UPDATE_GOLDEN=1 pytest tests/test_commands.py
The secret values themselves are checked by the payload tests below.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from reconciler.engine.commands import (
    REDACTED,
    Exec,
    KeyFile,
    Step,
    StepFailed,
    UapiSet,
    WriteFile,
    commands_for,
    render_commands,
)
from reconciler.engine.hoststate import ConfigFile, InterfaceConfig, Peer, Route, Secrets
from reconciler.engine.parsers import b64_to_hex, firewall_from_elements
from reconciler.engine.plan import (
    AddPeer,
    AddRoute,
    DeleteRoute,
    Plan,
    RemovePeer,
    ReplaceFirewall,
    SetInterface,
    UpdatePeer,
    WriteConfig,
)

GOLDEN = Path(__file__).resolve().parent / "golden" / "commands"


def const_key(byte: int) -> str:
    return base64.b64encode(bytes([byte]) * 32).decode()


A, B, C, D = (const_key(n) for n in (1, 2, 3, 4))
PSKS = {A: const_key(101), B: const_key(102), C: const_key(103)}
PRIV = const_key(200)
CONFIG = (f"[Interface]\nPrivateKey = {PRIV}\nListenPort = 51821\n\n[Peer]\n# org/a\n"
          f"PublicKey = {A}\nPresharedKey = {PSKS[A]}\nAllowedIPs = 10.20.0.6/32\n")
SECRETS = Secrets(PRIV, PSKS)
SECRET_VALUES = [PRIV, *PSKS.values()]


def peer(key: str, *ips: str, psk: str | None = "d0", ka: int = 25, owner: str = "") -> Peer:
    return Peer(key, tuple(ips), psk, ka, owner=owner or f"org/{key[:4]}")


FW_TEXT = ("table inet tunnelctl {\n\tmap tenant_profiles {\n\t\ttype ipv4_addr : verdict\n"
           "\t\tflags interval\n\t\telements = { 10.20.0.6/32 : jump svc_sip }\n\t}\n"
           "\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t}\n}\n")
FW_OLD = firewall_from_elements({("chain", "input"), ("elem", "tenant_profiles", "10.20.0.6/32",
                                                      "jump svc_sip")}, text=FW_TEXT)
FW_NEW = firewall_from_elements({("chain", "input"), ("chain", "svc_rtp"),
                                 ("elem", "tenant_profiles", "10.20.0.6/32", "jump svc_sip")},
                                text=FW_TEXT.replace("\tchain input", "\tchain svc_rtp {\n\t}\n"
                                                     "\tchain input"))
FW_ELEMS = firewall_from_elements({("chain", "input"),
                                   ("elem", "tenant_profiles", "10.20.0.6/32", "jump svc_rtp"),
                                   ("elem", "tenant_profiles", "10.20.0.10/32", "jump svc_sip")},
                                  text=FW_TEXT)

PLANS: dict[str, Plan] = {
    "add_peers": Plan((
        AddPeer(peer(A, "10.20.0.6/32", "192.168.10.0/24", owner="acme/hq"), "acme/hq"),
        AddPeer(peer(D, "10.20.0.22/32", psk=None, ka=0, owner="beta/pbx"), "beta/pbx"),
        AddRoute(Route("192.168.10.0/24", "wg1")),
    )),
    "remove_peers": Plan((
        RemovePeer(peer(B, "10.20.0.10/32", "192.168.20.0/24")),
        RemovePeer(peer(C, "10.20.0.14/32")),
        DeleteRoute(Route("192.168.20.0/24", "wg1")),
    )),
    "update_psk": Plan((
        UpdatePeer(peer(A, "10.20.0.6/32", psk="d0"), peer(A, "10.20.0.6/32", psk="d1")),
        UpdatePeer(peer(C, "10.20.0.14/32", psk="d0"), peer(C, "10.20.0.14/32", psk=None)),
    )),
    "routes": Plan((
        AddRoute(Route("192.168.10.0/24", "wg1")),
        AddRoute(Route("10.99.0.0/16", "wg1", "100")),
        DeleteRoute(Route("192.168.20.0/24", "wg1")),
        DeleteRoute(Route("172.16.5.0/24", "wg1", "100")),
    )),
    "firewall_replace": Plan((ReplaceFirewall(FW_OLD, FW_NEW),)),
    "firewall_elements": Plan((ReplaceFirewall(FW_OLD, FW_ELEMS),)),
    "firewall_create_delete": Plan((ReplaceFirewall(None, FW_OLD), ReplaceFirewall(FW_OLD, None))),
    "full_order": Plan((
        SetInterface(None, InterfaceConfig("wg1", 51821, "pub", "10.20.0.1/16", 1420, True)),
        ReplaceFirewall(None, FW_OLD),
        UpdatePeer(peer(C, "10.20.0.14/32"), peer(C, "10.20.0.14/32", "192.168.30.0/24", ka=0)),
        AddPeer(peer(A, "10.20.0.6/32"), "org/a"),
        RemovePeer(peer(B, "10.20.0.10/32")),
        AddRoute(Route("192.168.30.0/24", "wg1")),
        DeleteRoute(Route("192.168.20.0/24", "wg1")),
        WriteConfig(None, ConfigFile("/etc/wireguard/wg1.conf", "abc")),
    )),
}


def steps(name: str, uapi: bool) -> tuple[Step, ...]:
    return commands_for(PLANS[name], "wg1", SECRETS, uapi=uapi, config_text=CONFIG)


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from the golden file"


@pytest.mark.parametrize("name", sorted(PLANS))
def test_commands_match_golden_files(name: str) -> None:
    text = "".join(f"## {label}\n{render_commands(steps(name, uapi))}\n"
                   for label, uapi in (("control socket", True), ("wg set", False)))
    _golden(f"{name}.txt", text)


@pytest.mark.parametrize("uapi", [True, False])
@pytest.mark.parametrize("name", sorted(PLANS))
def test_redacted_forms_never_hold_a_secret(name: str, uapi: bool) -> None:
    built = steps(name, uapi)
    shown = render_commands(built) + repr(built)
    for secret in SECRET_VALUES:
        assert secret not in shown and b64_to_hex(secret) not in shown


def test_payloads_carry_the_secrets_their_display_redacts() -> None:
    by_kind = {uapi: [c for s in steps("full_order", uapi) for c in s.commands]
               for uapi in (True, False)}
    requests = "".join(c.request for c in by_kind[True] if isinstance(c, UapiSet))
    assert f"private_key={b64_to_hex(PRIV)}" in requests
    assert f"preshared_key={b64_to_hex(PSKS[A])}" in requests
    key_files = [k for c in by_kind[False] if isinstance(c, Exec) for k in c.key_files]
    assert [(k.name, k.content) for k in key_files] == [("private", PRIV + "\n"),
                                                        ("psk1", PSKS[A] + "\n")]
    for kind in (True, False):
        (write,) = [c for c in by_kind[kind] if isinstance(c, WriteFile)]
        assert write.content == CONFIG and write.mode == 0o600
        assert f"PrivateKey = {REDACTED}" in write.redacted()
    # No secret in any argv string: only KeyFile values, written to 0600 files by apply.
    for c in by_kind[False]:
        if isinstance(c, Exec):
            words = [a for a in c.argv if isinstance(a, str)]
            assert not any(s in w for s in SECRET_VALUES for w in words)


def test_the_zero_key_is_shown_since_it_is_no_secret() -> None:
    shown = render_commands(steps("update_psk", True))
    assert f"preshared_key={'0' * 64}" in shown and f"preshared_key={REDACTED}" in shown


def test_steps_follow_apply_order() -> None:
    assert [s.name for s in steps("full_order", True)] == [
        "routes", "peers", "firewall", "interface", "peers", "routes", "config"]


def test_wg_set_is_chunked_with_unique_key_file_names() -> None:
    keys = [base64.b64encode(i.to_bytes(32, "big")).decode() for i in range(2500)]
    many = Plan(tuple(AddPeer(peer(k, f"10.{20 + (i >> 8)}.{i & 255}.2/32"))
                      for i, k in enumerate(keys)))
    (step,) = commands_for(many, "wg1", Secrets(PRIV, {k: PSKS[A] for k in keys}), uapi=False)
    execs = [c for c in step.commands if isinstance(c, Exec)]
    assert [c.argv.count("peer") for c in execs] == [1000, 1000, 500]
    names = [k.name for c in execs for k in c.key_files]
    assert len(set(names)) == 2500 and names[-1] == "psk2499"


def test_a_step_that_cannot_be_built_names_itself() -> None:
    with pytest.raises(StepFailed) as info:
        commands_for(Plan((AddPeer(peer(D, "10.20.0.22/32")),)), "wg1", SECRETS, uapi=True)
    assert info.value.step == "peers" and isinstance(info.value.cause, KeyError)
    with pytest.raises(StepFailed) as info:
        commands_for(PLANS["full_order"], "wg1", SECRETS, uapi=True, config_text=None)
    assert info.value.step == "config"


def test_key_file_repr_hides_the_key() -> None:
    assert PRIV not in repr(KeyFile("private", PRIV))
    assert PRIV not in repr(WriteFile("/x", CONFIG)) and PRIV not in repr(UapiSet("wg1", PRIV))
