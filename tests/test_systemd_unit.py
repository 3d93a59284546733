"""The shipped systemd unit: hardening score, syntax, and the settings it points at."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.service.settings import load_settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNIT = DEPLOY / "tunnelctl.service"

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed")


def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


# Every unit a host installs (deploy/README.md); the template as its wg1 instance.
SHIPPED = ("tunnelctl.service", "tunnelctl-firewall.service", "tunnelctl-interface@.service")


@needs_analyze
@pytest.mark.parametrize("name", SHIPPED)
def test_exposure_is_at_most_2(name: str) -> None:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                           str(DEPLOY / name)], capture_output=True, text=True, check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    score = float(match.group(1))
    print(f"systemd-analyze exposure of {name}: {score}")
    assert score <= 2.0


@needs_analyze
@pytest.mark.parametrize("name", SHIPPED)
def test_unit_has_no_unknown_or_invalid_directives(tmp_path: Path, name: str) -> None:
    # verify insists ExecStart exists: point it at this checkout's console script.
    tunnelctl = Path(sys.executable).with_name("tunnelctl")
    assert tunnelctl.exists()
    copy = tmp_path / name.replace("@.", "@wg1.")
    copy.write_text((DEPLOY / name).read_text().replace("/usr/local/bin/tunnelctl",
                                                        str(tunnelctl)))
    proc = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                          text=True, check=False)
    # Units named in Wants=/After= but not installed on this machine are not the unit's fault.
    errors = [line for line in proc.stderr.splitlines()
              if line.strip() and "not found" not in line and "No such file" not in line]
    assert proc.stdout.strip() == "" and not errors, proc.stderr


def test_boot_order_is_fail_closed() -> None:
    fw = (DEPLOY / "tunnelctl-firewall.service").read_text()
    iface = (DEPLOY / "tunnelctl-interface@.service").read_text()
    svc = UNIT.read_text()
    assert "PartOf=nftables.service" in fw and "After=local-fs.target nftables.service" in fw
    assert "ReloadPropagatedFrom=nftables.service" in fw
    assert re.search(r"^Before=.*tunnelctl\.service", fw, re.MULTILINE)
    assert "After=tunnelctl-firewall.service" in iface and "Restart=always" in iface
    assert re.search(r"^Before=.*tunnelctl\.service", iface, re.MULTILINE)
    assert "tunnelctl-firewall.service" in svc


def test_unit_contract() -> None:
    d = directives()
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["Restart"] == ["on-failure"] and d["WatchdogSec"]
    assert d["ExecStart"] == ["/usr/local/bin/tunnelctl run --config /etc/tunnelctl/tunnelctl.toml"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert d["StateDirectory"] == ["tunnelctl"] and "RuntimeDirectory" not in d
    assert d["ProtectSystem"] == ["strict"] and d["NoNewPrivileges"] == ["yes"]
    assert d["SystemCallFilter"][0] == "@system-service"
    assert set(d["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_NETLINK", "AF_INET",
                                                           "AF_INET6"}
    writable = d["ReadWritePaths"][0].split()
    assert "/etc/wireguard" in writable, "the interface config file must stay writable"


def test_example_config_loads_and_matches_unit() -> None:
    s = load_settings(DEPLOY / "tunnelctl.toml")
    assert s.state_dir == Path("/var/lib/tunnelctl"), "StateDirectory=tunnelctl"
    assert str(s.config_dir) in directives()["ReadWritePaths"][0].split()
    assert s.metrics_bind == ("127.0.0.1", 9586)
