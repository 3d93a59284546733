"""Every message of the gateway rules (a tunnel against its gateway), pinned word for word for
both address families: subnet/subnet6 against the allocation size, the pool, the gateway's own
block, reserved and routed ranges and the public endpoint; lans/lans6 against what a customer
LAN may not cover; IPv6 keys on a gateway without IPv6; an unknown service."""

from __future__ import annotations

from datetime import date
from typing import Any

from repo_kit import key

from reconciler.repo.crossfile import (
    GatewayFile,
    TunnelFile,
    check_gateways,
    check_tunnels,
    conflict_partner,
)
from reconciler.repo.model import Gateway, Tunnel
from reconciler.repo.yamlio import Loc

SERVICES = {"sip": {"proto": "udp", "ports": "5060"}}
V6: dict[str, Any] = {"address6": "fd42:4242:1::1/32", "pool6": "fd42:4242:1::/48",
      "reserved6": ["fd42:4242:1:ff00::/56"],
      "routed_ranges6": ["fd42:4242:1:fe::/64", "fd00:77::/64"]}
# The address blocks are wider than the pools, so a LAN can hit the block but not the pool.
CLOUD: dict[str, Any] = {"name": "cloud-1", "address": "10.20.0.1/8", "pool": "10.20.0.0/16",
         "reserved": ["192.168.250.0/24"], "routed_ranges": ["172.31.0.0/24"],
         "endpoint": "10.20.9.9:51821", "services": SERVICES, **V6}
EDGE: dict[str, Any] = {**CLOUD, "name": "edge", "endpoint": "[fd00:9::9]:51821"}
PLAIN: dict[str, Any] = {"name": "plain", "address": "10.20.0.1/16", "pool": "10.20.0.0/16",
         "endpoint": "203.0.113.10:51821", "services": SERVICES}

# (file stem, gateway, subnet, other keys): each tunnel trips the rules its comment names.
TUNNELS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("size", "cloud-1", "10.20.1.0/29", {}),
    ("outside", "cloud-1", "10.21.0.4/30", {}),
    ("own", "cloud-1", "10.20.0.0/30", {}),
    ("reserved", "cloud-1", "192.168.250.4/30", {}),
    ("routed", "cloud-1", "172.31.0.4/30", {}),
    ("endpoint", "cloud-1", "10.20.9.8/30", {}),  # 10.20.9.9
    ("lans", "cloud-1", "10.20.1.4/30", {"lans": ["10.20.5.0/24", "10.30.0.0/24",
                                                  "192.168.250.128/25", "172.31.0.128/25",
                                                  "10.20.9.0/24"]}),
    ("size6", "cloud-1", "10.20.1.8/30", {"subnet6": "fd42:4242:1:100::/56"}),
    ("outside6", "cloud-1", "10.20.1.12/30", {"subnet6": "fd42:4242:9:5::/64"}),
    ("own6", "cloud-1", "10.20.1.16/30", {"subnet6": "fd42:4242:1::/64"}),
    ("reserved6", "cloud-1", "10.20.1.20/30", {"subnet6": "fd42:4242:1:ff05::/64"}),
    ("routed6", "cloud-1", "10.20.1.24/30", {"subnet6": "fd42:4242:1:fe::/64"}),
    ("both", "cloud-1", "10.20.1.28/30", {"lans": ["10.30.1.0/24"],
                                          "lans6": ["fd42:4242:1:77::/64", "fd42:4242:5::/48",
                                                    "fd00:77::/80"]}),
    ("endpoint6", "edge", "10.20.1.32/30", {"lans6": ["fd00:9::/48"]}),
    ("no-ipv6", "plain", "10.20.1.36/30", {"subnet6": "fd42:4242:1:1::/64",
                                           "lans6": ["fd00:1::/48"]}),
    ("services", "cloud-1", "10.20.1.40/30", {"services": ["sip", "fax"]}),
]


def findings() -> list[tuple[str, Loc, str]]:
    gateways = {g["name"]: GatewayFile(f"gateways/{g['name']}.yaml", Gateway.model_validate(g))
                for g in (CLOUD, EDGE, PLAIN)}
    tunnels = [TunnelFile(f"acme/{stem}.yaml", "acme", stem, Tunnel.model_validate(
        {"org": "acme", "name": stem, "gateway": gw, "public_key": key(stem),
         "subnet": subnet, **extra})) for stem, gw, subnet, extra in TUNNELS]
    found = check_tunnels(tunnels, gateways, lambda path, loc: (1, 1), date(2026, 6, 15))
    # conflicts between tunnels are the overlap sweep's (test_repo_crossfile), not pinned here
    return [(f.path, f.loc, f.message) for f in found if conflict_partner(f.message) is None]


EXPECTED: list[tuple[str, Loc, str]] = [
    ('acme/size.yaml', ('subnet',),
     ('subnet 10.20.1.0/29 is a /29; every tunnel gets a /30 from the pool 10.20.0.0/16 '
     "('tunnelctl new' picks a free one)")),
    ('acme/outside.yaml', ('subnet',),
     ('subnet 10.21.0.4/30 is outside the pool 10.20.0.0/16 of gateway cloud-1; pick a '
     'free /30 inside it')),
    ('acme/own.yaml', ('subnet',),
     ("subnet 10.20.0.0/30 overlaps the gateway's own block 10.20.0.0/30 (it holds the "
     'cloud address 10.20.0.1); pick another /30')),
    ('acme/reserved.yaml', ('subnet',),
     ('subnet 192.168.250.4/30 is outside the pool 10.20.0.0/16 of gateway cloud-1; '
     'pick a free /30 inside it')),
    ('acme/reserved.yaml', ('subnet',),
     ('subnet 192.168.250.4/30 overlaps the reserved infrastructure range '
     '192.168.250.0/24 (gateways/cloud-1.yaml); tenants may never use infrastructure '
     'addresses')),
    ('acme/routed.yaml', ('subnet',),
     ('subnet 172.31.0.4/30 is outside the pool 10.20.0.0/16 of gateway cloud-1; pick a '
     'free /30 inside it')),
    ('acme/routed.yaml', ('subnet',),
     ('subnet 172.31.0.4/30 overlaps the cloud service range 172.31.0.0/24 '
     '(gateways/cloud-1.yaml); tenants may never use infrastructure addresses')),
    ('acme/endpoint.yaml', ('subnet',),
     ("subnet 10.20.9.8/30 contains the gateway's public endpoint 10.20.9.9; that would "
     'loop the tunnel into itself')),
    ('acme/lans.yaml', ('lans', 0),
     ('LAN 10.20.5.0/24 overlaps the tunnel pool 10.20.0.0/16; a customer LAN must not '
     'cover cloud or tunnel addresses')),
    ('acme/lans.yaml', ('lans', 1),
     ("LAN 10.30.0.0/24 overlaps the gateway's address block 10.0.0.0/8; a customer LAN "
     'must not cover cloud or tunnel addresses')),
    ('acme/lans.yaml', ('lans', 2),
     ('LAN 192.168.250.128/25 overlaps reserved infrastructure range 192.168.250.0/24 '
     '(gateways/cloud-1.yaml); a customer LAN must not cover cloud or tunnel addresses')),
    ('acme/lans.yaml', ('lans', 3),
     ('LAN 172.31.0.128/25 overlaps cloud service range 172.31.0.0/24 '
     '(gateways/cloud-1.yaml); a customer LAN must not cover cloud or tunnel addresses')),
    ('acme/lans.yaml', ('lans', 4),
     ('LAN 10.20.9.0/24 overlaps the tunnel pool 10.20.0.0/16; a customer LAN must not '
     'cover cloud or tunnel addresses')),
    ('acme/lans.yaml', ('lans', 4),
     ("LAN 10.20.9.0/24 contains the gateway's public endpoint 10.20.9.9; the "
     "customer's router would send the tunnel into itself")),
    ('acme/size6.yaml', ('subnet6',),
     ('subnet6 fd42:4242:1:100::/56 is a /56; every tunnel gets a /64 from pool6 '
     "fd42:4242:1::/48 ('tunnelctl new' picks a free one)")),
    ('acme/outside6.yaml', ('subnet6',),
     ('subnet6 fd42:4242:9:5::/64 is outside pool6 fd42:4242:1::/48 of gateway cloud-1; '
     'pick a free /64 inside it')),
    ('acme/own6.yaml', ('subnet6',),
     ("subnet6 fd42:4242:1::/64 overlaps the gateway's own block fd42:4242:1::/64 (it "
     'holds the cloud address fd42:4242:1::1); pick another /64')),
    ('acme/reserved6.yaml', ('subnet6',),
     ('subnet6 fd42:4242:1:ff05::/64 overlaps the reserved infrastructure range '
     'fd42:4242:1:ff00::/56 (gateways/cloud-1.yaml); tenants may never use '
     'infrastructure addresses')),
    ('acme/routed6.yaml', ('subnet6',),
     ('subnet6 fd42:4242:1:fe::/64 overlaps the cloud service range fd42:4242:1:fe::/64 '
     '(gateways/cloud-1.yaml); tenants may never use infrastructure addresses')),
    ('acme/both.yaml', ('lans', 0),
     ("LAN 10.30.1.0/24 overlaps the gateway's address block 10.0.0.0/8; a customer LAN "
     'must not cover cloud or tunnel addresses')),
    ('acme/both.yaml', ('lans6', 0),
     ('LAN fd42:4242:1:77::/64 overlaps the IPv6 tunnel pool fd42:4242:1::/48; a '
     'customer LAN must not cover cloud or tunnel addresses')),
    ('acme/both.yaml', ('lans6', 1),
     ("LAN fd42:4242:5::/48 overlaps the gateway's IPv6 address block fd42:4242::/32; a "
     'customer LAN must not cover cloud or tunnel addresses')),
    ('acme/both.yaml', ('lans6', 2),
     ('LAN fd00:77::/80 overlaps cloud service range fd00:77::/64 '
     '(gateways/cloud-1.yaml); a customer LAN must not cover cloud or tunnel addresses')),
    ('acme/endpoint6.yaml', ('lans6', 0),
     ("LAN fd00:9::/48 overlaps the gateway's public endpoint fd00:9::9; a customer LAN "
     'must not cover cloud or tunnel addresses')),
    ('acme/no-ipv6.yaml', ('subnet6',),
     ('subnet6 fd42:4242:1:1::/64 needs IPv6 in the tunnels, but gateway plain has none '
     '(gateways/plain.yaml declares no address6/pool6); add them there, or remove '
     'subnet6')),
    ('acme/no-ipv6.yaml', ('lans6',),
     ('lans6 needs IPv6 in the tunnels, but gateway plain has none (gateways/plain.yaml '
     'declares no address6/pool6); add them there, or remove lans6')),
    ('acme/services.yaml', ('services', 1),
     "service 'fax' is not in the catalog of gateway cloud-1 (sip)"),
]


def test_every_gateway_rule_message_word_for_word() -> None:
    assert findings() == EXPECTED


def endpoint_findings() -> list[tuple[str, Loc, str]]:
    """A literal endpoint inside its family's pool, reserved or routed ranges."""
    cases: dict[str, dict[str, Any]] = {
        "pool": {**CLOUD, "endpoint": "10.20.9.9:51821"},
        "reserved": {**CLOUD, "endpoint": "192.168.250.7:51821"},
        "routed": {**CLOUD, "endpoint": "172.31.0.9:51821"},
        "pool6": {**CLOUD, "endpoint": "[fd42:4242:1::99]:51821"},
        "reserved6": {**CLOUD, "endpoint": "[fd42:4242:1:ff01::9]:51821"},
        "routed6": {**CLOUD, "endpoint": "[fd00:77::9]:51821"},
        "dns": {**CLOUD, "endpoint": "vpn.example.com:51821"},
    }
    files = [GatewayFile(f"gateways/{name}.yaml", Gateway.model_validate({**g, "name": name}))
             for name, g in cases.items()]
    return [(f.path, f.loc, f.message) for f in check_gateways(files)]


ENDPOINT_EXPECTED: list[tuple[str, Loc, str]] = [
    ('gateways/pool.yaml', ('pool',),
     ("10.20.0.0/16 contains the public endpoint 10.20.9.9; customers' routers would "
      'route the tunnel into itself. Remove the endpoint from this range')),
    ('gateways/reserved.yaml', ('reserved', 0),
     ("192.168.250.0/24 contains the public endpoint 192.168.250.7; customers' routers "
      'would route the tunnel into itself. Remove the endpoint from this range')),
    ('gateways/routed.yaml', ('routed_ranges', 0),
     ("172.31.0.0/24 contains the public endpoint 172.31.0.9; customers' routers would "
      'route the tunnel into itself. Remove the endpoint from this range')),
    ('gateways/pool6.yaml', ('pool6',),
     ("fd42:4242:1::/48 contains the public endpoint fd42:4242:1::99; customers' "
      'routers would route the tunnel into itself. Remove the endpoint from this range')),
    ('gateways/reserved6.yaml', ('pool6',),
     ("fd42:4242:1::/48 contains the public endpoint fd42:4242:1:ff01::9; customers' "
      'routers would route the tunnel into itself. Remove the endpoint from this range')),
    ('gateways/reserved6.yaml', ('reserved6', 0),
     ('fd42:4242:1:ff00::/56 contains the public endpoint fd42:4242:1:ff01::9; '
      "customers' routers would route the tunnel into itself. Remove the endpoint from "
      'this range')),
    ('gateways/routed6.yaml', ('routed_ranges6', 1),
     ("fd00:77::/64 contains the public endpoint fd00:77::9; customers' routers would "
      'route the tunnel into itself. Remove the endpoint from this range')),
]


def test_every_endpoint_rule_message_word_for_word() -> None:
    assert endpoint_findings() == ENDPOINT_EXPECTED
