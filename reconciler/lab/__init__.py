"""A network-namespace lab: real wireguard-go, real packets, for tests, benchmarks and the demo.

    from reconciler.lab import Lab
    with Lab("tenants") as lab:           # cloud + a router per tunnel with a known key
        reconcile(load_repo("tenants"), lab.target())
        assert lab.wait_handshake("acme-voip/hq")

Modules: layout (names, addresses; pure), topology (Lab: build and operate), wiring (the
ip -batch lines, a router's UAPI text, the probe servers; pure), processes
(tracked daemons, state file), teardown, traffic (probes from the lab side), netprobe (the
stdlib tool run inside namespaces), repogen (demo keys from data/, generated config repos),
demo and demo_checks (`tunnelctl demo`).

May import: every layer below it (service, operator, gitops, engine, repo); not reconciler.cli.
"""

from .layout import RUN_ROOT, InfraHost, Router, RouterConfig
from .processes import LabError, LabState, TrackedProcess
from .repogen import (
    GeneratedRepo,
    GeneratedTunnel,
    add_generated_tunnels,
    demo_private_keys,
    generate_repo,
)
from .teardown import find_labs, list_namespaces, teardown
from .topology import Lab
from .traffic import Flow, FlowResult, ServeLog, nonce, ping, tcp_probe, udp_probe

__all__ = [
    "RUN_ROOT", "Flow", "FlowResult", "GeneratedRepo", "GeneratedTunnel", "InfraHost", "Lab",
    "LabError", "LabState", "Router", "RouterConfig", "ServeLog", "TrackedProcess",
    "add_generated_tunnels", "demo_private_keys", "find_labs", "generate_repo", "list_namespaces",
    "nonce", "ping", "tcp_probe", "teardown", "udp_probe",
]
