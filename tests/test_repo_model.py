"""The pydantic models on their own: the single-value rules hold for models built in code too,
not only for YAML files."""

from __future__ import annotations

from datetime import UTC, date, datetime
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from pydantic import ValidationError
from repo_kit import GATEWAY_YAML, key

from reconciler.repo.model import Gateway, PortRange, Tunnel, TunnelStatus
from reconciler.repo.yamlio import parse

GATEWAY: dict[str, Any] = parse(GATEWAY_YAML.encode()).value  # type: ignore[union-attr]


def tunnel(**changes: Any) -> Tunnel:
    base: dict[str, Any] = {"org": "acme", "name": "hq", "gateway": "cloud-1",
                            "public_key": key(1), "subnet": "10.20.0.4/30"}
    return Tunnel.model_validate({**base, **changes})


def errors(**changes: Any) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as err:
        tunnel(**changes)
    return [(e["loc"], e["msg"]) for e in err.value.errors()]


def test_derived_values() -> None:
    t = tunnel(lans=["192.168.1.0/24"])
    assert t.ident == "acme/hq" and t.customer_address == IPv4Address("10.20.0.6")
    assert t.status is TunnelStatus.active and t.services is None
    gw = Gateway.model_validate(GATEWAY)
    assert gw.gateway_subnet == IPv4Network("10.20.0.0/30")
    assert gw.endpoint_ip == IPv4Address("203.0.113.10")
    assert gw.services["sip"].ports == (PortRange(first=5060, last=5060),
                                         PortRange(first=5080, last=5080))
    assert Gateway.model_validate({**GATEWAY, "endpoint": "vpn.example.com:51821"}).endpoint_ip is None


@pytest.mark.parametrize("name", ["a", "a-b", "0", "x" * 63, "9-lives"])
def test_good_names(name: str) -> None:
    assert tunnel(name=name).name == name


@pytest.mark.parametrize("name", ["", "A", "-a", "a_b", "a.b", "x" * 64, "a b", "a;rm -rf /",
                                  "$(reboot)", "`id`", "../x", "a\nb", "é"])
def test_bad_names(name: str) -> None:
    assert errors(name=name)[0][0] == ("name",)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_keys_must_be_32_bytes(length: int) -> None:
    loc, msg = errors(public_key=key(1, length))[0]
    assert loc == ("public_key",) and (f"decodes to {length} bytes" in msg or length == 0)


@pytest.mark.parametrize("lan,words", [
    ("0.0.0.0/0", "covers every address"), ("::/0", "covers every address"),
    ("fd00::/64", "IPv6"), ("8.8.8.0/24", "not a private range"),
    ("192.168.1.1/24", "not canonical"), ("192.168.1.0", "no prefix length"),
    ("192.168.1.0/33", "not an IPv4 CIDR"), (24, "expected an IPv4 CIDR"),
])
def test_bad_lans(lan: Any, words: str) -> None:
    loc, msg = errors(lans=[lan])[0]
    assert loc == ("lans", 0) and words in msg


def test_private_ranges_are_accepted_and_duplicates_point_at_the_second() -> None:
    ok = ["10.1.0.0/16", "172.31.0.0/24", "192.168.0.0/16", "100.64.1.0/24"]
    assert len(tunnel(lans=ok).lans) == 4
    assert errors(lans=["192.168.1.0/24", "10.0.0.0/8", "192.168.1.0/25"])[0][0] == ("lans", 2)


def test_revoked_needs_a_date_and_only_revoked_may_have_one() -> None:
    assert errors(status="revoked")[0][0] == ("revoked_at",)
    assert errors(revoked_at="2026-01-01")[0][0] == ("revoked_at",)
    t = tunnel(status="revoked", revoked_at=datetime(2026, 1, 31, 23, 30, tzinfo=UTC))
    assert t.revoked_at == date(2026, 1, 31)


def test_gateway_rules_point_at_their_field() -> None:
    def gw_errors(**changes: Any) -> list[tuple[Any, ...]]:
        with pytest.raises(ValidationError) as err:
            Gateway.model_validate({**GATEWAY, **changes})
        return [e["loc"] for e in err.value.errors()]

    assert gw_errors(address="10.30.0.1/16") == [("pool",)]
    assert gw_errors(endpoint="203.0.113.10") == [("endpoint",)]
    assert gw_errors(default_services=["sip", "ftp"]) == [("default_services", 1)]
    assert gw_errors(interface="a-very-long-interface") == [("interface",)]
    assert gw_errors(services={"sip": {"proto": "udp", "ports": "5080-5060"}}) == [
        ("services", "sip", "ports")]
    assert gw_errors(pool="0.0.0.0/0") == [("pool",)]


# ------------------------------------------------------------------ IPv6 inside tunnels

DUAL = {**GATEWAY, "address6": "fd42:4242:1::1/48", "pool6": "fd42:4242:1::/48"}


def gateway_errors(**changes: Any) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as err:
        Gateway.model_validate({**DUAL, **changes})
    return [(e["loc"], e["msg"]) for e in err.value.errors()]


def test_dual_stack_gateway_derived_values() -> None:
    from ipaddress import IPv6Address, IPv6Network

    gw = Gateway.model_validate(DUAL)
    assert gw.dual_stack and gw.allocation_prefix6 == 64
    assert gw.gateway_subnet6 == IPv6Network("fd42:4242:1::/64")
    assert not Gateway.model_validate(GATEWAY).dual_stack
    assert Gateway.model_validate(GATEWAY).gateway_subnet6 is None
    t = tunnel(subnet6="fd42:4242:1:5::/64", lans6=["fd00:5::/64"])
    assert t.customer_address6 == IPv6Address("fd42:4242:1:5::2")
    assert tunnel().customer_address6 is None and tunnel().lans6 == ()


@pytest.mark.parametrize("changes,loc,words", [
    ({"pool6": None}, ("pool6",), "address6 is set but pool6 is not"),
    ({"address6": None}, ("pool6",), "pool6 is set but address6 is not"),
    ({"address6": "fd42:4242:2::1/48"}, ("pool6",), "outside pool6"),
    ({"pool6": "2001:db8::/48", "address6": "2001:db8::1/48"}, ("address6",), "unique local"),
    ({"address6": "fd42:4242:1::1"}, ("address6",), "with prefix"),
    ({"address6": "10.20.0.1/16"}, ("address6",), "must be an IPv6 address"),
    ({"pool6": "fd42:4242:1::1/48"}, ("pool6",), "not canonical"),
    ({"pool6": "FD42:4242:1::/48"}, ("pool6",), "not canonical"),
    ({"pool6": "10.20.0.0/16"}, ("pool6",), "is IPv4"),
    ({"allocation_prefix6": 48}, ("allocation_prefix6",), "not smaller than pool6"),
    ({"allocation_prefix6": 127}, ("allocation_prefix6",), "less than or equal to 126"),
    ({"routed_ranges6": ["fd00:99::/64", "fd00:99::1/64"]}, ("routed_ranges6", 1),
     "not canonical"),
])
def test_dual_stack_gateway_rules_point_at_their_key(changes: dict[str, Any],
                                                       loc: tuple[Any, ...], words: str) -> None:
    found = gateway_errors(**{k: v for k, v in changes.items() if v is not None},
                           **{k: None for k, v in changes.items() if v is None})
    assert any(found_loc == loc and words in msg for found_loc, msg in found), found


def test_v6_ranges_need_a_v6_gateway() -> None:
    with pytest.raises(ValidationError) as err:
        Gateway.model_validate({**GATEWAY, "routed_ranges6": ["fd00:99::/64"]})
    (e,) = err.value.errors()
    assert e["loc"] == ("routed_ranges6", 0) and "address6 and pool6" in e["msg"]


@pytest.mark.parametrize("field,value,loc,words", [
    ("lans6", ["2001:db8::/64"], ("lans6", 0), "unique local"),
    ("lans6", ["192.168.1.0/24"], ("lans6", 0), "is IPv4"),
    ("lans6", ["fd00:1::/64", "fd00:1::/80"], ("lans6", 1), "overlaps LAN fd00:1::/64"),
    ("lans6", ["::/0"], ("lans6", 0), "covers every address"),
    ("lans", ["fd00:1::/64"], ("lans", 0), "lans6"),
    ("subnet6", "fd42:4242:1:5::2/64", ("subnet6",), "not canonical"),
    ("subnet6", "fd42:4242:1:5::", ("subnet6",), "no prefix length"),
])
def test_bad_v6_tunnel_values(field: str, value: Any, loc: tuple[Any, ...], words: str) -> None:
    found = errors(**{field: value})
    assert any(f_loc == loc and words in msg for f_loc, msg in found), found
