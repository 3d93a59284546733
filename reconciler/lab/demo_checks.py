"""The demo's isolation report: real packets through the lab, judged at the receiver.

Every probe carries a unique payload. "Allowed" means the echo came back; "blocked" means no
reply AND the receiving namespace's probe server never logged the payload (or the connection),
so a lost reply cannot pass for a blocked request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from reconciler.lab import Lab, nonce, tcp_probe, udp_probe

SIP, RTP, SSH = 5060, 10000, 22


@dataclass(frozen=True)
class CheckResult:
    name: str
    source: str
    destination: str
    expected: str  # "allowed" | "blocked"
    observed: str  # what actually happened, in words
    passed: bool


@dataclass(frozen=True)
class Roles:
    """Which lab routers play which part (chosen from the repo by their services and LANs)."""

    full: str  # a tenant with SIP and RTP and a routed LAN
    sip_only: str  # a tenant without RTP
    other_lan: str | None  # another tenant with a LAN host, target of the LAN check
    disabled: str | None  # a disabled tunnel that still has a router knocking


def _udp(lab: Lab, name: str, src_ns: str, src_label: str, dst: IPv4Address | IPv6Address,
         port: int, receiver_ns: str, expect_allowed: bool, timeout: float, *,
         spoof_from: IPv4Address | IPv6Address | None = None) -> CheckResult:
    payload = nonce("demo")
    echoed = udp_probe(src_ns, dst, port, payload=payload, timeout=timeout,
                       src=spoof_from, spoof=spoof_from is not None)
    arrived = lab.serve_log(receiver_ns).received(payload, proto="udp", dport=port)
    if echoed:
        observed = "echo received"
    elif arrived:
        observed = "arrived, no reply"
    else:
        observed = "never arrived"
    passed = echoed if expect_allowed else (not echoed and not arrived)
    where = f"[{dst}]" if isinstance(dst, IPv6Address) else str(dst)
    return CheckResult(name, src_label, f"{where} udp/{port}",
                       "allowed" if expect_allowed else "blocked", observed, passed)


def run_checks(lab: Lab, roles: Roles, *, timeout: float = 1.0,
               progress: Callable[[str], None] = lambda _: None) -> list[CheckResult]:
    gw = lab.gateway
    cloud = gw.address.ip
    full, sip_only = lab.routers[roles.full], lab.routers[roles.sip_only]
    out: list[CheckResult] = []

    def step(name: str) -> None:
        progress(name)

    step("tenant to its own SIP port")
    out.append(_udp(lab, "tenant → own SIP port", full.netns, roles.full, cloud, SIP, lab.netns,
                    True, timeout))
    if full.host_netns and full.host_address:
        step("LAN phone to the cloud")
        out.append(_udp(lab, "phone on routed LAN → SIP", full.host_netns,
                        f"{roles.full} LAN {full.host_address}", cloud, SIP, lab.netns, True,
                        timeout))
    step("tenant with RTP to RTP")
    out.append(_udp(lab, "tenant with RTP → RTP", full.netns, roles.full, cloud, RTP, lab.netns,
                    True, timeout))
    step("tenant without RTP to RTP")
    out.append(_udp(lab, "tenant without RTP → RTP", sip_only.netns, roles.sip_only, cloud, RTP,
                    lab.netns, False, timeout))

    step("tenant to cloud SSH")
    before = lab.serve_log(lab.netns).connections(dport=SSH, src=full.address)
    accepted = tcp_probe(full.netns, cloud, SSH, timeout=timeout)
    arrived = lab.serve_log(lab.netns).connections(dport=SSH, src=full.address) > before
    out.append(CheckResult("tenant → cloud SSH", roles.full, f"{cloud} tcp/{SSH}", "blocked",
                           "connected" if accepted else ("arrived" if arrived else "never arrived"),
                           not accepted and not arrived))

    # The checks below need packets the customer's own router would not send: the lab makes
    # the router route them into its tunnel, as a hostile customer could. The cloud must stop them.
    step("tenant to another tenant")
    lab.route_into_tunnel(roles.full, [f"{sip_only.address}/32"])
    out.append(_udp(lab, "tenant → other tenant", full.netns, roles.full, sip_only.address, SIP,
                    sip_only.netns, False, timeout))
    if roles.other_lan:
        other = lab.routers[roles.other_lan]
        assert other.host_netns and other.host_address
        step("tenant to another tenant's LAN")
        lab.route_into_tunnel(roles.sip_only, [f"{other.host_address}/32"])
        out.append(_udp(lab, "tenant → other tenant's LAN", sip_only.netns, roles.sip_only,
                        other.host_address, SIP, other.host_netns, False, timeout))
    if lab.infra:
        step("tenant to infrastructure")
        lab.route_into_tunnel(roles.full, [f"{lab.infra.address}/32"])
        out.append(_udp(lab, f"tenant → infrastructure ({lab.infra.cloud_interface})",
                        full.netns, roles.full, lab.infra.address, SIP, lab.infra.netns, False,
                        timeout))
    step("spoofed source address")
    out.append(_udp(lab, "spoofed source (other tenant's address)", full.netns,
                    f"{roles.full} as {sip_only.address}", cloud, SIP, lab.netns, False, timeout,
                    spoof_from=sip_only.address))
    out += _ipv6_checks(lab, roles, timeout, step)
    if roles.disabled:
        step("disabled tunnel")
        hs = lab.latest_handshake(roles.disabled)
        out.append(CheckResult("disabled tunnel → handshake", roles.disabled,
                               f"cloud udp/{gw.listen_port}", "blocked",
                               "handshake!" if hs else "no handshake", hs == 0))
    return out


def _ipv6_checks(lab: Lab, roles: Roles, timeout: float,
                 step: Callable[[str], None]) -> list[CheckResult]:
    """The same isolation over IPv6, on a dual-stack gateway whose two roles have subnet6."""
    gw = lab.gateway
    full, sip_only = lab.routers[roles.full], lab.routers[roles.sip_only]
    if gw.address6 is None or full.address6 is None or sip_only.address6 is None:
        return []
    cloud6 = gw.address6.ip
    out: list[CheckResult] = []
    step("IPv6: tenant to its own SIP port")
    out.append(_udp(lab, "tenant → own SIP port (IPv6)", full.netns, roles.full, cloud6, SIP,
                    lab.netns, True, timeout))
    step("IPv6: tenant without RTP to RTP")
    out.append(_udp(lab, "tenant without RTP → RTP (IPv6)", sip_only.netns, roles.sip_only,
                    cloud6, RTP, lab.netns, False, timeout))
    step("IPv6: tenant to another tenant")
    lab.route_into_tunnel(roles.full, [f"{sip_only.address6}/128"])
    out.append(_udp(lab, "tenant → other tenant (IPv6)", full.netns, roles.full,
                    sip_only.address6, SIP, sip_only.netns, False, timeout))
    if lab.infra:
        step("IPv6: tenant to infrastructure")
        lab.route_into_tunnel(roles.full, [f"{lab.infra.address6}/128"])
        out.append(_udp(lab, f"tenant → infrastructure ({lab.infra.cloud_interface}, IPv6)",
                        full.netns, roles.full, lab.infra.address6, SIP, lab.infra.netns, False,
                        timeout))
    step("IPv6: spoofed source address")
    out.append(_udp(lab, "spoofed IPv6 source (other tenant's address)", full.netns,
                    f"{roles.full} as {sip_only.address6}", cloud6, SIP, lab.netns, False,
                    timeout, spoof_from=sip_only.address6))
    return out
