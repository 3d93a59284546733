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
from reconciler.lab.layout import InfraHost, Router
from reconciler.repo.model import Gateway

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


@dataclass(frozen=True)
class _Family:
    """What differs between the IPv4 and the IPv6 round of checks. The IPv6 round repeats the
    isolation checks; the routed-LAN phone, RTP allowed, cloud SSH and other-LAN ones are
    IPv4 only (`full_set`)."""

    step: str  # prefix of each progress line
    tag: str  # after a check's name
    infra_tag: str  # inside the infrastructure check's parentheses
    spoofed: str  # the spoofed-source check's name
    host_len: int  # prefix length of one address routed into a tunnel
    cloud: Callable[[Gateway], IPv4Address | IPv6Address | None]
    address: Callable[[Router], IPv4Address | IPv6Address | None]
    infra: Callable[[InfraHost], IPv4Address | IPv6Address]
    full_set: bool


_IPV4 = _Family("", "", "", "spoofed source", 32, lambda gw: gw.address.ip,
                lambda r: r.address, lambda h: h.address, full_set=True)
_IPV6 = _Family("IPv6: ", " (IPv6)", ", IPv6", "spoofed IPv6 source", 128,
                lambda gw: gw.address6.ip if gw.address6 is not None else None,
                lambda r: r.address6, lambda h: h.address6, full_set=False)


def run_checks(lab: Lab, roles: Roles, *, timeout: float = 1.0,
               progress: Callable[[str], None] = lambda _: None) -> list[CheckResult]:
    out: list[CheckResult] = []
    for family in (_IPV4, _IPV6):
        out += _family_checks(lab, roles, family, timeout, progress)
    if roles.disabled:
        progress("disabled tunnel")
        hs = lab.latest_handshake(roles.disabled)
        out.append(CheckResult("disabled tunnel → handshake", roles.disabled,
                               f"cloud udp/{lab.gateway.listen_port}", "blocked",
                               "handshake!" if hs else "no handshake", hs == 0))
    return out


def _family_checks(lab: Lab, roles: Roles, fam: _Family, timeout: float,
                   progress: Callable[[str], None]) -> list[CheckResult]:
    """One family's round; none for IPv6 unless the gateway and both roles have it."""
    full, sip_only = lab.routers[roles.full], lab.routers[roles.sip_only]
    cloud, own, other = fam.cloud(lab.gateway), fam.address(full), fam.address(sip_only)
    if cloud is None or own is None or other is None:
        return []
    out: list[CheckResult] = []
    progress(f"{fam.step}tenant to its own SIP port")
    out.append(_udp(lab, f"tenant → own SIP port{fam.tag}", full.netns, roles.full, cloud, SIP,
                    lab.netns, True, timeout))
    if fam.full_set and full.host_netns and full.host_address:
        progress("LAN phone to the cloud")
        out.append(_udp(lab, "phone on routed LAN → SIP", full.host_netns,
                        f"{roles.full} LAN {full.host_address}", cloud, SIP, lab.netns, True,
                        timeout))
    if fam.full_set:
        progress("tenant with RTP to RTP")
        out.append(_udp(lab, "tenant with RTP → RTP", full.netns, roles.full, cloud, RTP,
                        lab.netns, True, timeout))
    progress(f"{fam.step}tenant without RTP to RTP")
    out.append(_udp(lab, f"tenant without RTP → RTP{fam.tag}", sip_only.netns, roles.sip_only,
                    cloud, RTP, lab.netns, False, timeout))
    if fam.full_set:
        progress("tenant to cloud SSH")
        out.append(_ssh(lab, roles.full, full, cloud, own, timeout))

    # The checks below need packets the customer's own router would not send: the lab makes
    # the router route them into its tunnel, as a hostile customer could. The cloud must stop them.
    progress(f"{fam.step}tenant to another tenant")
    lab.route_into_tunnel(roles.full, [f"{other}/{fam.host_len}"])
    out.append(_udp(lab, f"tenant → other tenant{fam.tag}", full.netns, roles.full, other, SIP,
                    sip_only.netns, False, timeout))
    if fam.full_set and roles.other_lan:
        lan_owner = lab.routers[roles.other_lan]
        assert lan_owner.host_netns and lan_owner.host_address
        progress("tenant to another tenant's LAN")
        lab.route_into_tunnel(roles.sip_only, [f"{lan_owner.host_address}/32"])
        out.append(_udp(lab, "tenant → other tenant's LAN", sip_only.netns, roles.sip_only,
                        lan_owner.host_address, SIP, lan_owner.host_netns, False, timeout))
    if lab.infra:
        infra = fam.infra(lab.infra)
        progress(f"{fam.step}tenant to infrastructure")
        lab.route_into_tunnel(roles.full, [f"{infra}/{fam.host_len}"])
        out.append(_udp(lab, f"tenant → infrastructure ({lab.infra.cloud_interface}"
                        f"{fam.infra_tag})", full.netns, roles.full, infra, SIP,
                        lab.infra.netns, False, timeout))
    progress(f"{fam.step}spoofed source address")
    out.append(_udp(lab, f"{fam.spoofed} (other tenant's address)", full.netns,
                    f"{roles.full} as {other}", cloud, SIP, lab.netns, False, timeout,
                    spoof_from=other))
    return out


def _ssh(lab: Lab, label: str, full: Router, cloud: IPv4Address | IPv6Address,
         own: IPv4Address | IPv6Address, timeout: float) -> CheckResult:
    """A tenant must not reach the cloud's SSH: judged by the connection log, like _udp."""
    before = lab.serve_log(lab.netns).connections(dport=SSH, src=own)
    accepted = tcp_probe(full.netns, cloud, SSH, timeout=timeout)
    arrived = lab.serve_log(lab.netns).connections(dport=SSH, src=own) > before
    return CheckResult("tenant → cloud SSH", label, f"{cloud} tcp/{SSH}", "blocked",
                       "connected" if accepted else ("arrived" if arrived else "never arrived"),
                       not accepted and not arrived)
