"""The floor (best raw tool per layer, no reconciler around it) and the naive baseline.

Both work on the very state the engine renders for the same repo: the same peers with their
PSKs and keepalives, the same routes, the same nftables table text. Each run gets an empty
interface of its own (a fresh lab), as the engine's cold converge does.

  floor   one `wg setconf` from a file, one `ip -batch`, one `nft -f`, and reading + parsing
          every tunnel file with PyYAML's C loader (yaml.CSafeLoader)
  naive   as the original hand-built system: one `wg set` process per peer, one
          `ip route add` process per route, ruamel.yaml round-trip parsing; its firewall is
          loaded with the same single `nft -f` (generous to the baseline)

Tools run without `ip netns exec` where they can (`wg` reaches wireguard-go by its socket
file, `ip -n` enters the namespace itself), so no baseline pays for the lab's wrapping.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from ruamel.yaml import YAML

from reconciler.engine.commands import route_batch
from reconciler.engine.hoststate import HostState, Secrets
from reconciler.engine.nft_transactions import firewall_transaction
from reconciler.engine.render import render_config


@dataclass(frozen=True)
class HostInputs:
    """Files and values the raw tools are given (prepared before any timing starts)."""

    wg_conf: str  # `wg setconf` format: the engine's config file minus wg-quick-only keys
    route_batch: str
    nft_file: str
    peers: tuple[tuple[str, str, str, int], ...]  # (public key, psk, allowed-ips csv, keepalive)
    routes: tuple[str, ...]  # destinations
    address: str


WG_QUICK_ONLY = ("Address", "MTU", "DNS", "Table", "PreUp", "PostUp", "PreDown", "PostDown",
                 "SaveConfig")


def host_inputs(desired: HostState, secrets: Secrets) -> HostInputs:
    assert desired.interface is not None and desired.firewall is not None
    conf = render_config(desired.interface, desired.peers, secrets)
    wg_conf = "".join(line + "\n" for line in conf.splitlines()
                      if line.split("=", 1)[0].strip() not in WG_QUICK_ONLY)
    routes = sorted(desired.routes)
    peers = tuple((p.public_key, secrets.psk(p.public_key) or "", ",".join(p.allowed_ips),
                   p.keepalive) for p in desired.peers.values())
    return HostInputs(wg_conf, route_batch(routes, []), firewall_transaction(desired.firewall.text),
                      peers, tuple(r.dst for r in routes), desired.interface.address or "")


def yaml_files(root: Path) -> list[Path]:
    """Every tunnel and gateway file of a generated repo (gateway.yaml + <org>/<name>.yaml)."""
    out = [root / "gateway.yaml"]
    for org in sorted(os.scandir(root), key=lambda e: e.name):
        if org.is_dir() and not org.name.startswith("."):
            out += sorted(Path(org.path, f) for f in os.listdir(org.path) if f.endswith(".yaml"))
    return out


def parse_c_loader(files: list[Path]) -> float:
    t0 = time.perf_counter()
    for f in files:
        yaml.load(f.read_bytes(), Loader=yaml.CSafeLoader)
    return time.perf_counter() - t0


def parse_ruamel_roundtrip(files: list[Path]) -> float:
    loader = YAML()  # typ="rt": the round-trip loader a comment-keeping editor uses
    t0 = time.perf_counter()
    for f in files:
        loader.load(f.read_bytes())
    return time.perf_counter() - t0


def _timed(argv: list[str], stdin: str | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, input=stdin.encode() if stdin is not None else None,
                   capture_output=True, check=True)
    return time.perf_counter() - t0


def _ns(netns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def prepare_interface(netns: str, interface: str, address: str) -> None:
    """What the engine's interface step does before peers: address and link up (not timed)."""
    batch = "".join(f"address replace {a} dev {interface}\n" for a in address.split(",") if a)
    batch += f"link set dev {interface} up\n"
    subprocess.run(["ip", "-n", netns, "-batch", "-"], input=batch.encode(), check=True,
                   capture_output=True)


def host_counts(netns: str, interface: str) -> tuple[int, int, bool]:
    """(peers, our routes, table present): checks the baselines did the whole job."""
    peers = subprocess.run(["wg", "show", interface, "peers"], capture_output=True, text=True,
                           check=True).stdout.split()
    routes = subprocess.run(["ip", "-n", netns, "route", "show", "table", "all", "dev",
                             interface, "proto", "252"], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    table = subprocess.run(_ns(netns, "nft", "list", "table", "inet", "tunnelctl"),
                           capture_output=True, check=False).returncode == 0
    return len(peers), len(routes), table


def floor_host(netns: str, interface: str, inputs: HostInputs, workdir: Path) -> dict[str, float]:
    """One `wg setconf`, one `ip -batch`, one `nft -f` on an empty interface."""
    prepare_interface(netns, interface, inputs.address)
    conf = workdir / "floor-wg.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(inputs.wg_conf)
    routes = workdir / "floor-routes.batch"
    routes.write_text(inputs.route_batch)
    nft = workdir / "floor-table.nft"
    nft.write_text(inputs.nft_file)
    out = {"wg_setconf": _timed(["wg", "setconf", interface, str(conf)]),
           "ip_batch": _timed(["ip", "-n", netns, "-batch", str(routes)]),
           "nft_f": _timed(_ns(netns, "nft", "-f", str(nft)))}
    conf.unlink()
    return out


def naive_host(netns: str, interface: str, inputs: HostInputs, nft_file: Path) -> dict[str, float]:
    """One `wg set` per peer (PSK from a 0600 file), one `ip route add` per route."""
    prepare_interface(netns, interface, inputs.address)
    with tempfile.TemporaryDirectory(prefix="tunnelctl-naive-", dir="/run") as tmp:
        os.chmod(tmp, 0o700)
        psk_files = []
        for n, (_, psk, _, _) in enumerate(inputs.peers):
            path = Path(tmp) / f"psk{n}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(psk + "\n")
            psk_files.append(str(path))
        t0 = time.perf_counter()
        for (key, _, allowed, keepalive), psk_file in zip(inputs.peers, psk_files, strict=True):
            subprocess.run(["wg", "set", interface, "peer", key, "preshared-key", psk_file,
                            "allowed-ips", allowed, "persistent-keepalive",
                            str(keepalive) if keepalive else "off"], check=True,
                           capture_output=True)
        t_wg = time.perf_counter() - t0
    t0 = time.perf_counter()
    for dst in inputs.routes:
        subprocess.run(["ip", "-n", netns, "route", "add", dst, "dev", interface, "proto", "252"],
                       check=True, capture_output=True)
    t_ip = time.perf_counter() - t0
    nft_file.write_text(inputs.nft_file)
    return {"wg_set_per_peer": t_wg, "ip_route_per_route": t_ip,
            "nft_f": _timed(_ns(netns, "nft", "-f", str(nft_file)))}
