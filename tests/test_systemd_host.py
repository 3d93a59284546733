"""A host's whole life under a real PID 1 systemd (issue 11): boot, reboots, firewall restarts,
crashes, a hung cycle, reload, hardening and the journal.

One bookworm container (tests/nspawn.py) with the product installed offline from the locks,
the shipped units enabled as deploy/README.md says, and a config repo (a bare repo inside).
Inside it, test-only units build two tenant routers in network namespaces (wireguard-go, keys
from the repo) and start probes *before* any tunnelctl unit runs, at every boot:

- a receiver in the cloud namespace logs every packet that reaches a host port: UDP 5060 (SIP,
  allowed), UDP 5999 and TCP 2222 (not a tenant service: must never arrive from a tenant);
- a receiver in router r2's namespace logs what reaches it from another tenant;
- a sender in r1 sends to all of them every 50 ms, from before the interface exists.

Probes are judged at the receivers. The receiver logs live on the container's disk, so they
span every boot.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nspawn import Container, fresh_root, tools_missing

from reconciler.engine.psk import derive_psk
from reconciler.engine.wgkeys import generate_private_key, public_key

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = ("tunnelctl.service", "tunnelctl-firewall.service", "tunnelctl-interface@.service")
INTERVAL = 8  # the service's interval inside (a raw flush is repaired well before it)
WATCHDOG = 6  # WatchdogSec in the test drop-in (the shipped 120 s is too long to wait for)
REBOOTS = int(os.environ.get("TUNNELCTL_TEST_REBOOTS", "5"))

# `lab` too: it needs root and changes the host (a container), so `-m 'not lab'` skips it.
pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.systemd,
              pytest.mark.skipif(tools_missing() is not None, reason=str(tools_missing()))]

GATEWAY = """\
name: cloud-1
interface: wg1
listen_port: 51821
address: 10.20.0.1/16
pool: 10.20.0.0/16
allocation_prefix: 30
endpoint: 203.0.113.10:51821
public_key: {pub}
mtu: 1420
services:
  sip: {{proto: udp, ports: "5060"}}
  rtp: {{proto: udp, ports: "10000-20000"}}
default_services: [sip]
"""

TUNNEL = """\
org: {org}
name: site
gateway: cloud-1
public_key: {pub}
subnet: {subnet}
status: active
persistent_keepalive: 1
psk_rotation: 0
"""

ROUTERS = {"r1": ("org-one", "10.20.0.4/30", "10.20.0.6", "172.31.1"),
           "r2": ("org-two", "10.20.0.8/30", "10.20.0.10", "172.31.2")}
FORBIDDEN = {("udp", 5999), ("tcp", 2222)}

# Test-only tools inside the container (stdlib python3 of Debian).
PROBE = r'''
import json, socket, sys, time, select
mode, log = sys.argv[1], sys.argv[2]
if mode == "receive":
    socks = []
    for spec in sys.argv[3:]:
        proto, port = spec.split(":")
        if proto == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", int(port)))
        if proto == "tcp":
            s.listen(64)
        socks.append((proto, int(port), s))
    with open(log, "a", buffering=1) as out:
        while True:
            ready, _, _ = select.select([s for _, _, s in socks], [], [])
            for proto, port, s in socks:
                if s not in ready:
                    continue
                if proto == "udp":
                    data, (src, _) = s.recvfrom(2048)
                else:
                    conn, (src, _) = s.accept()
                    conn.close()
                out.write(json.dumps({"t": time.time(), "src": src, "proto": proto,
                                      "port": port}) + "\n")
else:
    targets = [t.split(":") for t in sys.argv[3:]]
    while True:
        for host, proto, port in targets:
            try:
                if proto == "udp":
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                        s.sendto(b"probe", (host, int(port)))
                else:
                    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                        s.setblocking(False)
                        try:
                            s.connect((host, int(port)))
                        except BlockingIOError:
                            pass
                        select.select([], [s], [], 0.02)
            except OSError:
                pass
        time.sleep(0.05)
'''

ROUTERS_SH = """#!/bin/sh
# Test-only: tenant routers in network namespaces, before any tunnelctl unit (every boot).
set -e
mkdir -p /run/wireguard
for r in {names}; do
  eval "net=\\$NET_$r addr=\\$ADDR_$r"
  ip netns add "$r"
  ip link add "v$r" type veth peer name "v$r-in"
  ip link set "v$r-in" netns "$r"
  ip addr add "$net.1/30" dev "v$r"
  ip link set "v$r" up
  ip -n "$r" addr add "$net.2/30" dev "v$r-in"
  ip -n "$r" link set "v$r-in" up
  ip -n "$r" link set lo up
  ip netns exec "$r" env GOMEMLIMIT=256MiB wireguard-go "wg$r"
  ip netns exec "$r" wg set "wg$r" private-key "/etc/tctest/$r.key" listen-port 0 \\
     peer "$(cat /etc/tctest/cloud.pub)" preshared-key "/etc/tctest/$r.psk" \\
     endpoint "$net.1:51821" allowed-ips 10.20.0.0/16 persistent-keepalive 1
  ip -n "$r" addr add "$addr/30" dev "wg$r"
  ip -n "$r" link set "wg$r" mtu 1420 up
  ip -n "$r" route add 10.20.0.0/16 dev "wg$r" 2>/dev/null || true
done
"""


def _unit(text: str) -> str:
    return "\n".join(line.strip() for line in text.strip().splitlines()) + "\n"


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def enable(root: Path, unit: str, target: str = "multi-user.target") -> None:
    wants = root / "etc" / "systemd" / "system" / f"{target}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    template = re.sub(r"@[^.]+\.", "@.", unit)
    for base in ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"):
        src = root / base / template
        if src.exists():
            link = wants / unit
            link.unlink(missing_ok=True)
            link.symlink_to(f"/{base}/{template}")
            return
    raise FileNotFoundError(template)


def git(cwd: Path, *args: str) -> str:
    import subprocess

    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          check=True).stdout


def provision(root: Path, work: Path) -> dict[str, Any]:
    """Everything a host gets from deploy/README.md, plus the test-only routers and probes."""
    secrets: dict[str, str] = {}
    cloud_priv = generate_private_key()
    host_secret = os.urandom(32)
    secrets["cloud"] = cloud_priv
    etc = root / "etc"
    write(etc / "tunnelctl" / "private.key", cloud_priv + "\n", 0o600)
    import base64

    write(etc / "tunnelctl" / "psk.secret", base64.b64encode(host_secret).decode() + "\n", 0o600)
    os.chmod(etc / "tunnelctl", 0o700)
    write(etc / "tunnelctl" / "tunnelctl.toml", (
        'repo_url = "/srv/config.git"\nbranch = "main"\ngateway = "cloud-1"\n'
        f'interval = {INTERVAL}\nlog_format = "json"\nretry_max = 10\n'), 0o600)
    # The config repo: a bare repo inside the container.
    src = work / "config"
    (src / "tenants").mkdir(parents=True)
    (src / "gateway.yaml").write_text(GATEWAY.format(pub=public_key(cloud_priv)))
    write(etc / "tctest" / "cloud.pub", public_key(cloud_priv) + "\n")
    env_lines = []
    for r, (org, subnet, addr, net) in ROUTERS.items():
        priv = generate_private_key()
        psk = derive_psk(host_secret, org, "site", 0)
        secrets[r] = priv
        secrets[r + "-psk"] = psk
        write(etc / "tctest" / f"{r}.key", priv + "\n", 0o600)
        write(etc / "tctest" / f"{r}.psk", psk + "\n", 0o600)
        write(src / "tenants" / org / "site.yaml",
              TUNNEL.format(org=org, pub=public_key(priv), subnet=subnet))
        env_lines.append(f"NET_{r}={net} ADDR_{r}={addr}")
    git(src, "init", "-q", "-b", "main")
    git(src, "add", "-A")
    git(src, "commit", "-q", "-m", "two tenants")
    bare = root / "srv" / "config.git"
    bare.parent.mkdir(parents=True, exist_ok=True)
    git(work, "clone", "-q", "--bare", str(src), str(bare))
    # The shipped units, enabled as deploy/README.md says.
    system = etc / "systemd" / "system"
    for unit in UNITS:
        write(system / unit, (DEPLOY / unit).read_text())
    for unit in ("tunnelctl.service", "tunnelctl-firewall.service", "tunnelctl-interface@wg1.service",
                 "nftables.service"):
        enable(root, unit)
    fw_wants = system / "nftables.service.wants"
    fw_wants.mkdir(parents=True, exist_ok=True)
    (fw_wants / "tunnelctl-firewall.service").unlink(missing_ok=True)
    (fw_wants / "tunnelctl-firewall.service").symlink_to("/etc/systemd/system/"
                                                         "tunnelctl-firewall.service")
    # Test drop-ins: a watchdog short enough to wait for; the remote is writable (audit).
    write(system / "tunnelctl.service.d" / "test.conf", _unit(f"""
        [Service]
        WatchdogSec={WATCHDOG}s
        RestartSec=1s
        ReadWritePaths=/srv/config.git
        """))
    # Test-only routers and probes: before any tunnelctl unit, at every boot.
    write(root / "usr" / "local" / "lib" / "tctest" / "probe.py", PROBE)
    script = ROUTERS_SH.format(names=" ".join(ROUTERS)).split("\n", 1)
    exports = "\n".join(f"export {e}" for e in " ".join(env_lines).split())
    write(root / "usr" / "local" / "lib" / "tctest" / "routers.sh",
          f"{script[0]}\n{exports}\n{script[1]}", 0o755)
    early = ("DefaultDependencies=no\nAfter=local-fs.target systemd-tmpfiles-setup.service\n"
             "Before=tunnelctl-firewall.service tunnelctl-interface@wg1.service "
             "nftables.service\n")
    write(system / "tctest-routers.service", _unit(f"""
        [Unit]
        {early}
        [Service]
        Type=oneshot
        RemainAfterExit=yes
        ExecStart=/usr/local/lib/tctest/routers.sh
        """))
    cloud_targets = "10.20.0.1:udp:5060 10.20.0.1:udp:5999 10.20.0.1:tcp:2222 10.20.0.10:udp:5999"
    write(system / "tctest-receiver.service", _unit(f"""
        [Unit]
        {early}
        [Service]
        ExecStart=/usr/bin/python3 /usr/local/lib/tctest/probe.py receive /var/log/tctest/cloud.jsonl udp:5060 udp:5999 tcp:2222
        """))
    write(system / "tctest-receiver-r2.service", _unit(f"""
        [Unit]
        {early}
        Requires=tctest-routers.service
        After=tctest-routers.service
        [Service]
        ExecStart=/usr/sbin/ip netns exec r2 /usr/bin/python3 /usr/local/lib/tctest/probe.py receive /var/log/tctest/r2.jsonl udp:5999
        """))
    write(system / "tctest-sender.service", _unit(f"""
        [Unit]
        {early}
        Requires=tctest-routers.service
        After=tctest-routers.service tctest-receiver.service tctest-receiver-r2.service
        [Service]
        ExecStart=/usr/sbin/ip netns exec r1 /usr/bin/python3 /usr/local/lib/tctest/probe.py send - {cloud_targets}
        """))
    (root / "var" / "log" / "tctest").mkdir(parents=True, exist_ok=True)
    for unit in ("tctest-routers.service", "tctest-receiver.service",
                 "tctest-receiver-r2.service", "tctest-sender.service"):
        enable(root, unit, "sysinit.target")
    return secrets


class Host:
    def __init__(self, container: Container, secrets: dict[str, str]) -> None:
        self.c = container
        self.secrets = secrets
        self.figures: dict[str, Any] = {}

    def received(self, log: str = "cloud") -> list[dict[str, Any]]:
        path = self.c.root / "var" / "log" / "tctest" / f"{log}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def leaks(self, since: float = 0.0, until: float = float("inf")) -> list[dict[str, Any]]:
        """Packets from a tenant that reached a host port or another tenant."""
        out = [e for e in self.received("cloud") if e["src"].startswith("10.20.")
               and (e["proto"], e["port"]) in FORBIDDEN]
        out += [e for e in self.received("r2") if e["src"].startswith("10.20.")]
        return [e for e in out if since <= e["t"] <= until]

    def sip_arrivals(self, since: float) -> int:
        return sum(1 for e in self.received("cloud") if e["t"] >= since and e["port"] == 5060
                   and e["src"] == ROUTERS["r1"][2])

    def status(self) -> dict[str, Any]:
        out = self.c.sh(["tunnelctl", "status", "-o", "json"], check=False).stdout
        return json.loads(out) if out.strip().startswith("{") else {}

    def converged(self, timeout: float = 60.0) -> float:
        """READY=1 (the unit is active), status Ready, both routers handshook, SIP arriving."""
        t0 = time.monotonic()
        self.c.wait_for("tunnelctl.service active", ["systemctl", "is-active",
                                                      "tunnelctl.service"], timeout=timeout)
        self.c.wait_for("status Ready", ["tunnelctl", "status", "-o", "json"],
                        ok='"Ready"', timeout=timeout)
        handshook = "test $(wg show wg1 latest-handshakes | awk '$2 > 0' | wc -l) -eq 2"
        self.c.wait_for("handshakes", ["sh", "-c", handshook], timeout=timeout)
        since = time.time()
        deadline = time.monotonic() + 20
        while self.sip_arrivals(since) == 0:
            assert time.monotonic() < deadline, "allowed SIP never arrived from r1"
            time.sleep(0.2)
        return time.monotonic() - t0

    def table_back(self, timeout: float) -> float:
        return self.c.wait_for("table inet tunnelctl", ["nft", "list", "table", "inet",
                                                        "tunnelctl"], timeout=timeout,
                               interval=0.02)

    def main_pid(self) -> int:
        out = self.c.sh(["systemctl", "show", "-p", "MainPID", "--value",
                         "tunnelctl.service"]).stdout
        return int(out.strip() or 0)

    def cycles(self) -> int:
        out = self.c.sh(["journalctl", "-u", "tunnelctl.service", "-o", "cat",
                         "--no-pager"]).stdout
        n = 0
        for line in out.splitlines():
            if line.startswith("{") and json.loads(line).get("event") == "cycle":
                n += 1
        return n


def new_pid_argv(old: int) -> list[str]:
    """Succeeds once tunnelctl.service has a main pid other than `old` (and 0)."""
    return ["sh", "-c", ("systemctl show -p MainPID --value tunnelctl.service "
            f"| grep -vx '0\\|{old}'")]


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    work, root = fresh_root()
    container = Container(root, work)
    try:
        secrets = provision(root, work)
        container.boot()
        h = Host(container, secrets)
        h.figures["first_boot_s"] = round(h.converged(timeout=90), 2)
        yield h
        print("drill figures:", json.dumps(h.figures))
    finally:
        container.destroy()


def test_first_boot_converges_and_isolates(host: Host) -> None:
    st = host.status()
    assert st.get("phase") == "Ready", st
    assert host.c.sh(["systemctl", "is-active", "tunnelctl-firewall.service",
                      "tunnelctl-interface@wg1.service"]).returncode == 0
    # Isolation, judged at the receivers, while SIP from the same tenant does arrive.
    time.sleep(1.0)
    assert host.sip_arrivals(0.0) > 0
    assert host.leaks() == [], host.leaks()[:5]
    # The persisted table is the loaded one.
    persisted = (host.c.root / "var/lib/tunnelctl/firewall/host.nft").read_text()
    live = host.c.sh(["nft", "list", "table", "inet", "tunnelctl"]).stdout
    fp = re.search(r"fp ([0-9a-f]+)", live)
    assert fp and f"fp {fp.group(1)}" in persisted


def test_nftables_restart_reloads_the_table_within_a_second(host: Host) -> None:
    t0 = time.time()
    host.c.sh(["systemctl", "restart", "nftables.service"])
    back = host.table_back(timeout=5)
    gone_for = time.time() - t0
    host.figures["nftables_restart_table_back_s"] = round(gone_for, 3)
    assert gone_for <= 1.0 + back * 0, gone_for
    time.sleep(0.5)
    host.figures["nftables_restart_leaked_packets"] = len(host.leaks(since=t0))


def test_raw_flush_is_repaired_at_once(host: Host) -> None:
    t0 = time.time()
    host.c.sh(["nft", "flush", "ruleset"])
    back = host.table_back(timeout=INTERVAL + 10)
    host.figures["raw_flush_table_back_s"] = round(back, 2)
    # The service's ruleset-generation watcher wakes a cycle at once; the interval (8 s
    # here) would be the bound without it.
    assert back <= 4.0, back
    time.sleep(1.0)
    host.figures["raw_flush_leaked_packets"] = len(host.leaks(since=t0))
    # The window is the documented one: once the table is back, nothing leaks.
    after = time.time()
    time.sleep(1.5)
    assert host.leaks(since=after) == []


def test_kill_9_of_the_service_restarts_and_converges(host: Host) -> None:
    pid = host.main_pid()
    host.c.sh(["systemctl", "kill", "-s", "KILL", "tunnelctl.service"])
    t0 = time.monotonic()
    host.c.wait_for("a new main pid", new_pid_argv(pid), timeout=60)
    host.converged(timeout=60)
    host.figures["kill9_to_converged_s"] = round(time.monotonic() - t0, 2)


def test_a_hung_cycle_is_killed_by_the_watchdog(host: Host) -> None:
    pid = host.main_pid()
    host.c.sh(["systemctl", "kill", "-s", "STOP", "tunnelctl.service"])
    t0 = time.monotonic()
    host.c.wait_for("the watchdog restart", new_pid_argv(pid), timeout=WATCHDOG * 3 + 40)
    host.figures["sigstop_to_restart_s"] = round(time.monotonic() - t0, 2)
    journal = host.c.sh(["journalctl", "-u", "tunnelctl.service", "--no-pager"]).stdout
    assert "Watchdog timeout" in journal
    host.converged(timeout=60)


def test_reload_runs_one_extra_cycle(host: Host) -> None:
    host.converged(timeout=30)
    # Right after an interval cycle, so the next one is a whole interval away.
    first = host.cycles()
    deadline = time.monotonic() + INTERVAL + 10
    while host.cycles() == first:
        assert time.monotonic() < deadline, "no interval cycle"
        time.sleep(0.1)
    before = host.cycles()
    host.c.sh(["systemctl", "reload", "tunnelctl.service"])
    time.sleep(2.5)  # well inside the interval: only the reload can have caused a cycle
    assert host.cycles() - before == 1


def test_units_are_hardened_and_the_journal_is_json_without_secrets(host: Host) -> None:
    for unit in ("tunnelctl.service", "tunnelctl-firewall.service",
                 "tunnelctl-interface@wg1.service"):
        out = host.c.sh(["systemd-analyze", "security", "--no-pager", unit], check=False)
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
        assert m, out.stdout[-500:] + out.stderr[-500:]
        host.figures[f"exposure {unit}"] = float(m.group(1))
        assert float(m.group(1)) <= 2.0, (unit, m.group(1))
    journal = host.c.sh(["journalctl", "-u", "tunnelctl.service", "-o", "cat",
                         "--no-pager"]).stdout
    events = [json.loads(line) for line in journal.splitlines() if line.startswith("{")]
    assert len(events) >= 5 and {"started", "cycle"} <= {e.get("event") for e in events}
    everything = host.c.sh(["journalctl", "-o", "cat", "--no-pager"]).stdout
    for name, secret in host.secrets.items():
        assert secret not in everything, f"the {name} key is in the journal"


def test_reboots_converge_without_a_leak_at_any_moment(host: Host) -> None:
    times = []
    for _ in range(REBOOTS):
        host.c.poweroff()
        t0 = time.time()
        host.c.boot()
        times.append(round(host.converged(timeout=90), 2))
        time.sleep(0.5)
        assert host.leaks(since=t0) == [], host.leaks(since=t0)[:5]
    host.figures["reboots"] = REBOOTS
    host.figures["reboot_to_converged_s"] = times
