"""Lost packets on an untouched tunnel while the engine adds and removes ~1,000 tenants.

A real lab router for one tenant completes a handshake and pings the cloud's tunnel address
every 10 ms through its tunnel. Meanwhile the engine applies the whole repo (every other
tenant added: peers, routes, the firewall table replaced) and then takes them away again.
The router's peer is in neither change, so not one echo may go missing.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from reconciler.engine.cycle import reconcile
from reconciler.lab import Lab
from reconciler.repo.state import load_repo

from .configrepo import BenchRepo


def packet_loss(repo: BenchRepo, *, interval: float = 0.01) -> dict[str, Any]:
    state = load_repo(repo.work)
    ident = repo.idents()[0]
    alone = dataclasses.replace(state, tunnels=tuple(t for t in state.tunnels if t.ident == ident))
    with Lab(repo.work, routers=[ident], private_keys=repo.keys, infra=False, services=False,
             router_keepalive=25) as lab:
        target = lab.target()
        first = reconcile(alone, target, gateway=lab.gateway.name)
        if not first.verified:
            raise RuntimeError(f"packet-loss setup: converging {ident} alone failed: {first.error}")
        router = lab.routers[ident]
        handshake = lab.wait_handshake(ident, timeout=10)
        flow = lab.flow(router.netns, lab.gateway.address.ip, interval=interval)
        flow.wait_ready()
        time.sleep(0.3)
        grow = reconcile(state, target, gateway=lab.gateway.name)
        time.sleep(0.3)
        shrink = reconcile(alone, target, gateway=lab.gateway.name)
        time.sleep(0.3)
        res = flow.stop()
    return {"tenants": len(state.tunnels), "router": ident, "handshake": handshake,
            "sent": res.sent, "received": res.received, "lost": len(res.lost),
            "seconds": round(res.seconds, 3),
            "add_ok": grow.verified, "add_changes": len(grow.plan),
            "add_seconds": round(grow.timings.get("total", 0.0), 3),
            "remove_ok": shrink.verified, "remove_changes": len(shrink.plan),
            "remove_seconds": round(shrink.timings.get("total", 0.0), 3),
            "errors": [e for e in (grow.error, shrink.error) if e]}
