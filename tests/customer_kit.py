"""A dual-stack copy of the shipped tenants/ repo for the customer-config tests: the gateway
gets address6/pool6/routed_ranges6, acme-voip/hq a subnet6 and an IPv6 LAN, bluebird-telecom/main
a subnet6 without LANs, carrot-dental/clinic stays IPv4-only."""

from __future__ import annotations

import shutil
from pathlib import Path

TENANTS = Path(__file__).resolve().parent.parent / "tenants"

GATEWAY6 = ("address6: fd42:4242:1::1/48\n"
            "pool6: fd42:4242:1::/48\n"
            "routed_ranges6: [fd42:4242:ff00::/64]\n")
TUNNEL6 = {
    "acme-voip/hq": "subnet6: fd42:4242:1:5::/64\nlans6:\n  - fd99:10::/64\n",
    "bluebird-telecom/main": "subnet6: fd42:4242:1:8::/64\n",
}


def dual_stack_repo(dest: Path, *, gateway_extra: str = GATEWAY6) -> Path:
    """tenants/ copied to `dest` (reused when it exists) with the IPv6 keys appended."""
    if not dest.exists():
        shutil.copytree(TENANTS, dest)
    with (dest / "gateway.yaml").open("a") as fh:
        fh.write(gateway_extra)
    for ident, extra in TUNNEL6.items():
        with (dest / f"{ident}.yaml").open("a") as fh:
            fh.write(extra)
    return dest
