"""The lab: a cloud namespace, customer routers with LAN hosts, an infra host, real wireguard-go.

    cloud (tcl-<id>-cloud)  managed interface <cloud_if> (bare wireguard-go: the engine configures
       │  r<k> 198.18.x.1/30      it), infra veth named like gateway.infra_interfaces[0],
       │                          svc0 to the routed-range host, probe server on the cloud's
       │                          tunnel addresses (IPv4 and IPv6) and its infra addresses
    router k (tcl-<id>-r<k>) wan0 198.18.x.2/30, wireguard-go tc<id>r<k> = the customer's side
       │  lan0 <LAN>.1 (+ <LAN6>::1)
    LAN host k (tcl-<id>-h<k>) eth0 <LAN>.10 (+ <LAN6>::10), default via the router
    infra (tcl-<id>-infra)   eth0 reserved[0].2 and reserved6[0]::2 (or a lab ULA /64)
    svc (tcl-<id>-svc)       eth0 routed_ranges[0].10 / routed_ranges6[0]::10, when declared

IPv6 follows the repo: a dual-stack gateway's routers get their tunnel's customer_address6 and
route address6 (+ routed_ranges6) into the tunnel; a router with lans6 gets an IPv6 LAN host.
The cloud's address6 is the engine's to set, like its IPv4 address. DAD is off in every lab
namespace (and `nodad` on every address), so an IPv6 address works the moment it is added.

The veth links stand in for the internet (198.18.0.0/15, the benchmarking range; nothing is
ever routed to the real host). Everything is created inside the lab's own namespaces, so
parallel labs never meet; only wireguard-go's socket directory is shared, hence interface
names carry the lab id. The lab never configures the cloud's peers, routes or firewall.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface, IPv6Network, ip_network
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from reconciler.engine import wgkeys
from reconciler.engine.psk import create_host_secret, derive_psk, read_host_secret
from reconciler.engine.runner import UAPI_DIR, Runner
from reconciler.repo.model import Gateway
from reconciler.repo.state import GatewayChoiceError, load_repo

from .layout import (
    RUN_ROOT,
    InfraHost,
    LayoutError,
    RoutedHost,
    Router,
    RouterConfig,
    check_lab_name,
    namespace,
    new_lab_name,
    plan_infra,
    plan_routed,
    plan_router,
)
from .processes import (
    LabError,
    LabState,
    TrackedProcess,
    own_starttime,
    spawn,
    uapi_socket_busy,
    wait_for,
)
from .repogen import merged_private_keys
from .teardown import ACTIVE_LABS, list_namespaces, teardown
from .traffic import Flow, ServeLog, netprobe_argv
from .wiring import (
    OUTSIDE_PORT,
    SIP_PORT,
    cloud_commands,
    cloud_networks,
    infra_commands,
    lan_host_commands,
    probe_servers,
    routed_commands,
    router_commands,
    router_uapi,
    serve_args,
)

__all__ = ["FORWARDING", "NO_DAD", "OUTSIDE_PORT", "SIP_PORT", "WIREGUARD_ENV", "Lab"]

if TYPE_CHECKING:
    from reconciler.engine.cycle import HostTarget

# Without a memory limit wireguard-go was seen past 1 GB after repeated 16k-peer reconfiguration.
# The same limit as a bootstrapped host (bootstrap.WIREGUARD_GO_ENV): 16k peers keep ~200 MB
# live, and under a 256 MiB limit the collector runs nonstop (a wg dump took 3x, a 16k-peer
# set 2x as long; see bench/RESULTS.md).
WIREGUARD_ENV = {"GOMEMLIMIT": "512MiB", "WG_PROCESS_FOREGROUND": "1"}
# No duplicate address detection anywhere in a lab: a tentative IPv6 address (the veths'
# link-local ones included, which neighbour discovery needs) would fail probes for ~2 s.
NO_DAD = ("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
FORWARDING = ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")


@dataclass
class _Live:
    """Mutable bookkeeping of a running lab (not part of the public API)."""

    state: LabState
    popens: dict[int, Any] = field(default_factory=dict)
    configs: dict[str, RouterConfig] = field(default_factory=dict)


class Lab:
    """Build with `with Lab(repo) as lab:` (or `up()`/`down()`); teardown always runs."""

    def __init__(self, repo: Path | str, *, name: str | None = None, gateway: str | None = None,
                 routers: Sequence[str] | int | Literal["all"] = "all",
                 private_keys: Mapping[str, str] | None = None, cloud_interface: str | None = None,
                 infra: bool = True, services: bool = True, router_keepalive: int | None = None,
                 run_root: Path = RUN_ROOT, detached: bool = False, routed: bool = True) -> None:
        try:
            self.name = check_lab_name(name or new_lab_name())
        except LayoutError as exc:
            raise LabError(str(exc)) from None
        self.repo = Path(repo).resolve()
        state = load_repo(self.repo)
        try:
            self.gateway: Gateway = state.gateway(gateway)
        except GatewayChoiceError as exc:
            raise LabError(f"{self.repo}: {exc}") from None
        self._keys = merged_private_keys(private_keys)
        self._tunnels = {t.ident: t for t in state.for_gateway(self.gateway.name)}
        self._selected = self._select(routers)
        self.interface = cloud_interface or f"tc{self.name}c"
        self.netns = namespace(self.name, "cloud")
        self.run_dir = run_root / self.name
        self.secret_dir = self.run_dir / "secrets"
        self.config_dir = self.run_dir / "config"
        self.log_dir = self.run_dir / "logs"
        self._services = services
        self._router_keepalive = router_keepalive
        self._detached = detached
        try:
            self.routers: dict[str, Router] = {ident: plan_router(self.name, k, self._tunnels[ident])
                                               for k, ident in enumerate(self._selected)}
        except LayoutError as exc:
            raise LabError(str(exc)) from None
        self.infra: InfraHost | None = plan_infra(self.name, self.gateway) if infra else None
        self.routed: RoutedHost | None = plan_routed(self.name, self.gateway) if routed else None
        self.cloud_public_key = ""
        self._live: _Live | None = None

    # -- naming and planning -------------------------------------------------------------
    def _select(self, routers: Sequence[str] | int | Literal["all"]) -> list[str]:
        if routers == "all":
            return [i for i in self._tunnels if i in self._keys]
        if isinstance(routers, int):
            return [i for i in self._tunnels if i in self._keys][:routers]
        missing = [i for i in routers if i not in self._tunnels]
        if missing:
            raise LabError(f"no tunnel {missing} for gateway {self.gateway.name} in {self.repo}")
        keyless = [i for i in routers if i not in self._keys]
        if keyless:
            raise LabError(f"no private key for router(s) {keyless}: pass private_keys=")
        return list(routers)

    @property
    def namespaces(self) -> list[str]:
        out = [self.netns] + ([self.infra.netns] if self.infra else []) \
            + ([self.routed.netns] if self.routed else [])
        for r in self.routers.values():
            out += [r.netns] + ([r.host_netns] if r.host_netns else [])
        return out

    @property
    def wg_interfaces(self) -> list[str]:
        return [self.interface] + [r.interface for r in self.routers.values()]

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Self:
        return self.up()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()

    def up(self) -> Self:
        if self._live is not None:
            raise LabError(f"lab {self.name} is already up")
        self._check_free()
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        # The run dir may already hold a repo generated for this lab (`tunnelctl lab up --tenants`).
        self.run_dir.mkdir(mode=0o700, exist_ok=True)
        for d in (self.secret_dir, self.config_dir, self.log_dir):
            d.mkdir(mode=0o700, exist_ok=True)
        self._live = _Live(LabState(self.name, str(self.run_dir), os.getpid(), own_starttime(),
                                    self._detached))
        self._live.state.save()
        if not self._detached:
            ACTIVE_LABS.add(self)
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Stop our processes, delete our namespaces, sockets and run dir. Safe to call twice."""
        live, self._live = self._live, None
        ACTIVE_LABS.discard(self)
        if live is not None:
            teardown(live.state, live.popens)

    def _check_free(self) -> None:
        taken = [ns for ns in list_namespaces() if ns.startswith(namespace(self.name, ""))]
        if taken or (self.run_dir / "lab.json").exists():
            raise LabError(f"lab {self.name!r} already exists ({self.run_dir}, namespaces {taken}); "
                           f"remove it with: tunnelctl lab down --name {self.name}")
        busy = [i for i in self.wg_interfaces if uapi_socket_busy(i)]
        if busy:
            raise LabError(f"wireguard-go interface(s) {busy} already run on this machine "
                           f"({UAPI_DIR}); choose another lab name or cloud interface")

    def _track(self, process: TrackedProcess, popen: Any) -> None:
        assert self._live is not None
        self._live.state.processes.append(process)
        self._live.popens[process.pid] = popen
        self._live.state.save()

    def _build(self) -> None:
        assert self._live is not None
        state, gw, root = self._live.state, self.gateway, Runner()
        cloud_key = self._keys.get(f"gateway/{gw.name}") or wgkeys.generate_private_key()
        root.write_file(self.secret_dir / "private.key", cloud_key + "\n", 0o600)
        create_host_secret(self.secret_dir / "psk.secret")
        self.cloud_public_key = wgkeys.public_key(cloud_key)
        state.wg_interfaces = self.wg_interfaces
        state.namespaces = self.namespaces
        state.info = self.describe()
        state.save()  # before creating anything, so a crash mid-build is still cleanable
        root.run(["ip", "-batch", "-"], stdin="".join(f"netns add {ns}\n" for ns in state.namespaces),
                 write=True)
        forwarders = {self.netns, *(r.netns for r in self.routers.values())}
        for ns in state.namespaces:  # before any interface exists: new ones inherit `default`
            sysctls = NO_DAD + (FORWARDING if ns in forwarders else ())
            Runner(ns).run(["sysctl", "-qw", *sysctls], write=True)
        wg_procs = [(self.netns, self.interface)] + [(r.netns, r.interface) for r in self.routers.values()]
        started = []
        for ns, ifname in wg_procs:
            # A dead socket left by a killed wireguard-go of this name would pass the readiness
            # wait below before the new process replaced it (wireguard-go removes it too).
            sock = UAPI_DIR / f"{ifname}.sock"
            if sock.exists() and not uapi_socket_busy(ifname):
                sock.unlink(missing_ok=True)
            proc, popen = spawn(["wireguard-go", "-f", ifname], role=f"wireguard-go {ifname}",
                                netns=ns, env=WIREGUARD_ENV, output=self.log_dir / f"{ifname}.log")
            self._track(proc, popen)
            started.append((proc, ifname))
        for proc, ifname in started:
            wait_for(UAPI_DIR / f"{ifname}.sock", timeout=10, what=f"wireguard-go {ifname}",
                     alive=proc, log=self.log_dir / f"{ifname}.log")
        self._ip_batch(self.netns, cloud_commands(self.infra, self.routed, self.routers.values()))
        if self.infra:
            self._ip_batch(self.infra.netns, infra_commands(self.infra))
        if self.routed:
            self._ip_batch(self.routed.netns, routed_commands(self.routed))
        for r in self.routers.values():
            self._build_router(r)
        if self._services:
            self._start_services()

    def _cloud_networks(self, router: Router) -> list[IPv4Network | IPv6Network]:
        return cloud_networks(self.gateway, router)

    def _build_router(self, r: Router) -> None:
        tunnel = self._tunnels[r.ident]
        self._ip_batch(r.netns, router_commands(r, self.gateway.mtu, self._cloud_networks(r)))
        if r.host_netns:
            self._ip_batch(r.host_netns, lan_host_commands(r))
        assert self._live is not None
        keepalive = self._router_keepalive if self._router_keepalive is not None \
            else tunnel.persistent_keepalive
        self._live.configs[r.ident] = RouterConfig(self._keys[r.ident], tunnel.psk_rotation, keepalive)
        self._push_router(r.ident)

    def _start_services(self) -> None:
        """Echo/listen servers that log every arrival: cloud, infra, routers, LAN hosts."""
        servers = probe_servers(self.gateway, self.netns, self.infra, self.routed,
                                self.routers.values())
        pending = []
        for ns, addrs, udp, tcp in servers:
            ready = self.log_dir / f"serve-{ns}.ready"
            args = serve_args(str(self.serve_log(ns).path), str(ready), addrs, udp, tcp)
            proc, popen = spawn(netprobe_argv(*args), role=f"serve {ns}", netns=ns,
                                output=self.log_dir / f"serve-{ns}.out")
            self._track(proc, popen)
            pending.append((proc, ready, ns))
        for proc, ready, ns in pending:
            wait_for(ready, timeout=10, what=f"probe server in {ns}", alive=proc,
                     log=self.log_dir / f"serve-{ns}.out")

    def _ip_batch(self, netns: str, commands: Iterable[str]) -> None:
        Runner().run(["ip", "-n", netns, "-batch", "-"], stdin="".join(c + "\n" for c in commands),
                     write=True)

    # -- routers ---------------------------------------------------------------------------
    def _push_router(self, ident: str) -> None:
        """Send a router its whole WireGuard config over the UAPI socket (keys never in argv)."""
        assert self._live is not None
        r, cfg = self.routers[ident], self._live.configs[ident]
        tunnel = self._tunnels[ident]
        psk = derive_psk(read_host_secret(self.secret_dir / "psk.secret"), tunnel.org, tunnel.name,
                         cfg.psk_rotation)
        allowed = dict.fromkeys([*self._cloud_networks(r), *cfg.extra_allowed])
        endpoint = f"{r.cloud_wan_address}:{self.gateway.listen_port}"
        Runner().uapi(r.interface, router_uapi(cfg, psk, self.cloud_public_key, endpoint, allowed),
                      write=True)

    def configure_router(self, ident: str, *, private_key: str | None = None,
                         psk_rotation: int | None = None, keepalive: int | None = None) -> None:
        """Reconfigure a customer router, e.g. after a PSK rotation or a key change in the repo."""
        live = self._require_live()
        cfg = live.configs[ident]
        live.configs[ident] = replace(
            cfg, private_key=private_key or cfg.private_key,
            psk_rotation=cfg.psk_rotation if psk_rotation is None else psk_rotation,
            keepalive=cfg.keepalive if keepalive is None else keepalive)
        self._push_router(ident)

    def reload_tunnel(self, ident: str, repo: Path | str) -> None:
        """Take a router's tunnel settings (rotation, keepalive) from another repo version."""
        tunnel = next(t for t in load_repo(repo).tunnels if t.ident == ident)
        self._tunnels[ident] = tunnel
        self.configure_router(ident, psk_rotation=tunnel.psk_rotation,
                              keepalive=tunnel.persistent_keepalive)

    def route_into_tunnel(self, ident: str,
                          networks: Iterable[IPv4Network | IPv6Network | str]) -> None:
        """Make a router send `networks` (IPv4 or IPv6) into its tunnel, as a hostile customer
        would. The cloud, not the customer, must stop such packets: this is how isolation is
        tested.
        """
        live = self._require_live()
        nets = tuple(ip_network(n) for n in networks)
        cfg = live.configs[ident]
        live.configs[ident] = replace(cfg, extra_allowed=tuple(dict.fromkeys(cfg.extra_allowed + nets)))
        self._push_router(ident)
        r = self.routers[ident]
        self._ip_batch(r.netns, [f"route replace {n} dev {r.interface}" for n in nets])

    def add_router_address(self, ident: str, address: IPv6Interface | str) -> None:
        """Give a router's tunnel interface an IPv6 address the repo does not give it, e.g. a
        customer configuring IPv6 that the gateway does not offer. Probes may then use it."""
        self._require_live()
        r = self.routers[ident]
        self._ip_batch(r.netns, [f"addr add {IPv6Interface(address)} dev {r.interface} nodad"])

    def latest_handshake(self, ident: str) -> int:
        """Unix time of the router's last completed handshake with the cloud (0 = never)."""
        body = Runner().uapi(self.routers[ident].interface, "get=1\n")
        for line in body.splitlines():
            if line.startswith("last_handshake_time_sec="):
                return int(line.split("=", 1)[1])
        return 0

    def wait_handshakes(self, idents: Iterable[str], *, timeout: float = 10.0) -> dict[str, bool]:
        """Poll until every router has a handshake or `timeout`; {ident: handshaken}."""
        pending = set(idents)
        done: dict[str, bool] = {i: False for i in pending}
        deadline = time.monotonic() + timeout
        while pending:
            for ident in list(pending):
                if self.latest_handshake(ident) > 0:
                    done[ident] = True
                    pending.discard(ident)
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return done

    def wait_handshake(self, ident: str, *, timeout: float = 10.0) -> bool:
        return self.wait_handshakes([ident], timeout=timeout)[ident]

    # -- traffic ---------------------------------------------------------------------------
    def dead_daemons(self) -> list[str]:
        """Roles of the lab's wireguard-go and probe servers that are no longer running.

        A test that concludes "never arrived" should check this is empty: a crashed server
        logs nothing, which would make every later negative pass vacuously."""
        live = self._require_live()
        return [p.role for p in live.state.processes
                if p.role.startswith(("wireguard-go ", "serve ")) and not p.is_running()]

    def serve_log(self, netns: str) -> ServeLog:
        """Log of the probe server in `netns` (cloud, infra, a router or a LAN host)."""
        return ServeLog(self.log_dir / f"serve-{netns}.jsonl")

    def flow(self, netns: str, dst: IPv4Address | IPv6Address | str, *, interval: float = 0.05,
             proto: str = "icmp", port: int = SIP_PORT) -> Flow:
        """Start a tracked ping/UDP flow; `stop()` it for the loss summary."""
        self._require_live()
        return Flow(netns, dst, workdir=self.log_dir, interval=interval, proto=proto, port=port,
                    on_start=self._track)

    # -- engine hand-off and description ----------------------------------------------------
    def target(self) -> HostTarget:
        """Where the engine should apply: the cloud namespace and its managed interface."""
        from reconciler.engine.cycle import HostTarget

        return HostTarget(netns=self.netns, interface=self.interface, secret_dir=self.secret_dir,
                          config_dir=self.config_dir)

    def apply_command(self, repo: Path | str | None = None) -> list[str]:
        cmd = ["tunnelctl", "apply", "--netns", self.netns, "--interface", self.interface,
               "--secret-dir", str(self.secret_dir), "--config-dir", str(self.config_dir),
               "--gateway", self.gateway.name, str(repo or self.repo)]
        return cmd

    def describe(self) -> dict[str, Any]:
        return {
            "repo": str(self.repo), "gateway": self.gateway.name,
            "cloud": {"netns": self.netns, "interface": self.interface,
                      "public_key": self.cloud_public_key,
                      "secret_dir": str(self.secret_dir), "config_dir": str(self.config_dir)},
            "infra": None if not self.infra else {"netns": self.infra.netns,
                                                  "address": str(self.infra.address),
                                                  "address6": str(self.infra.address6)},
            "routed": None if not self.routed else {
                "netns": self.routed.netns,
                "address": str(self.routed.address) if self.routed.address else None,
                "address6": str(self.routed.address6) if self.routed.address6 else None},
            "routers": [{"ident": r.ident, "netns": r.netns, "interface": r.interface,
                         "address": str(r.address),
                         "address6": str(r.address6) if r.address6 else None, "endpoint":
                         f"{r.cloud_wan_address}:{self.gateway.listen_port}",
                         "host_netns": r.host_netns,
                         "host_address": str(r.host_address) if r.host_address else None,
                         "host_address6": str(r.host_address6) if r.host_address6 else None}
                        for r in self.routers.values()],
            "apply_command": self.apply_command(),
        }

    def _require_live(self) -> _Live:
        if self._live is None:
            raise LabError(f"lab {self.name} is not up")
        return self._live
