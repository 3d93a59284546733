"""A host's life outside a cycle: the persisted table, loading it at boot, and the interface.

Fail-closed at every moment rests on three things here:

- every verified cycle persists the table it verified (`persist_firewall`: an `nft -f`
  transaction that names only `inet tunnelctl`, written atomically under the state
  directory), so the file always holds the last table the engine checked on the host;
- `load_firewall` puts that table back (at boot, after `systemctl restart nftables`, before the
  interface exists); a host that has never applied gets `closed_table`: nothing from the
  tenant interface reaches the host or is forwarded;
- `run_interface` owns the interface: it loads the table first and refuses to create the
  interface when it cannot, then creates it (kernel WireGuard with `ip link add`, else a
  wireguard-go it supervises in the foreground for systemd). A new interface has no peers
  and no address, so it passes no tenant traffic until a cycle configures it, firewall first.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from reconciler.engine.files import atomic_write
from reconciler.engine.hoststate import FIREWALL_FAMILY, FIREWALL_TABLE, TENANT_MAP
from reconciler.engine.nft_transactions import firewall_transaction
from reconciler.engine.nftables import (
    Chain,
    Counter,
    CtDirection,
    CtState,
    Hook,
    IfMatch,
    Rule,
    Table,
    Verdict,
)
from reconciler.engine.runner import UAPI_DIR, CommandError, Runner

log = logging.getLogger("tunnelctl.engine")

DEFAULT_STATE_DIR = Path("/var/lib/tunnelctl")
FIREWALL_SUBDIR = "firewall"
WIREGUARD_GO_ENV = {"GOMEMLIMIT": "512MiB"}  # without it wireguard-go was seen past 1 GB
NO_KERNEL_WIREGUARD = ("Unknown device type", "Operation not supported", "not supported")


# ----------------------------------------------------------------------- the persisted table


def firewall_path(state_dir: Path, netns: str | None) -> Path:
    """Where the table for the host (or a lab namespace) is persisted."""
    return state_dir / FIREWALL_SUBDIR / f"{netns or 'host'}.nft"


def persist_firewall(path: Path, text: str) -> bool:
    """Write the replace-our-table transaction for `text` unless the file already holds it.
    Returns whether it wrote."""
    content = firewall_transaction(text)
    try:
        if path.read_text() == content:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, content, 0o600)
    return True


def persisted_text(path: Path, fingerprint: str) -> str | None:
    """The persisted table's text when it is the table with `fingerprint`, else None (a
    rollback that must load a whole table it did not list falls back on this)."""
    try:
        content = path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    head = firewall_transaction(None)
    if not content.startswith(head) or f"; fp {fingerprint}\"" not in content[:4096]:
        return None
    return content[len(head):]


def closed_table(interface: str) -> str:
    """Our table for an interface and no tenants: nothing arriving on it reaches the host or
    another interface, nothing is forwarded to it; replies to the host's own connections
    pass. Other interfaces are left to other tables. No rule names an address family, so in
    the inet table the drops hold for IPv6 from the tenant interface as for IPv4."""
    accept, drop = Verdict("accept"), Verdict("drop")
    replies = Rule((CtDirection("reply"), CtState(("established", "related")), accept),
                   "replies")
    chains = (
        Chain("input", (Rule((IfMatch("iifname", "!=", interface), accept),
                             "not from tenants: other tables"),
                        replies,
                        Rule((Counter(), drop), "fail closed: no tenant table loaded yet")),
              Hook("input", -5, "accept")),
        Chain("forward", (Rule((IfMatch("iifname", "==", interface), Counter(), drop),
                               "no forwarding from tenants"),
                          Rule((IfMatch("oifname", "==", interface), Counter(), drop),
                               "no forwarding to tenants")),
              Hook("forward", -5, "accept")),
    )
    table = Table(FIREWALL_FAMILY, FIREWALL_TABLE, interface, TENANT_MAP, (), "routed_ranges",
                  (), chains)
    return table.text("0")


def table_loaded(runner: Runner) -> bool:
    res = runner.run(["nft", "list", "table", FIREWALL_FAMILY, FIREWALL_TABLE], check=False)
    return res.returncode == 0


def load_firewall(runner: Runner, path: Path, interface: str | None = None, *,
                  only_if_absent: bool = False) -> str:
    """Load the persisted table (or, when none was ever persisted, the closed table for
    `interface`). One `nft -f` transaction that names only our table. Returns what it did."""
    if only_if_absent and table_loaded(runner):
        return "present"
    if path.is_file():
        runner.run(["nft", "-f", str(path)], write=True)
        return f"loaded {path}"
    if interface is None:
        # A host that never applied: the interface unit closes its interface itself before
        # creating it (run_interface), so there is nothing to protect here yet.
        return f"nothing persisted yet ({path}); the interface unit loads the closed table"
    runner.run(["nft", "-f", "-"], stdin=firewall_transaction(closed_table(interface)),
               write=True)
    return f"loaded the closed table for {interface} (nothing persisted yet)"


# ------------------------------------------------------------------------------ interface


def link_exists(runner: Runner, interface: str) -> bool:
    return runner.run(["ip", "link", "show", "dev", interface], check=False).returncode == 0


def create_kernel_interface(runner: Runner, interface: str) -> bool:
    """`ip link add <if> type wireguard`: True when created, False when the kernel has no
    WireGuard (then wireguard-go is the way); other failures raise CommandError."""
    res = runner.run(["ip", "link", "add", interface, "type", "wireguard"], check=False,
                     write=True)
    if res.returncode == 0:
        return True
    if any(m in res.stderr for m in NO_KERNEL_WIREGUARD):
        return False
    raise CommandError(res.argv, res.returncode, res.stderr)


def run_interface(interface: str, firewall: Path, *, runner: Runner | None = None,
                  ready: Callable[[str], object] = lambda _s: None,
                  wait_socket: float = 10.0) -> int:
    """The interface unit's main process (`tunnelctl interface run IF`).

    Loads the persisted table when ours is absent (refusing to go on without it), then makes
    the interface exist: an existing one is left as it is; kernel WireGuard is created and
    this process then only waits (so the unit stays active); otherwise wireguard-go runs in
    the foreground as our child and dies with us, and this returns its exit status so systemd
    restarts both. `ready` is called once the interface exists (sd_notify READY=1)."""
    runner = runner or Runner()
    stop = threading.Event()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_term)
    done = load_firewall(runner, firewall, interface, only_if_absent=True)
    log.info("firewall for %s: %s", interface, done)
    if link_exists(runner, interface):
        ready(f"{interface} exists")
        stop.wait()
        return 0
    if create_kernel_interface(runner, interface):
        ready(f"{interface}: kernel WireGuard")
        stop.wait()
        return 0
    UAPI_DIR.mkdir(parents=True, exist_ok=True, mode=0o755)
    child = runner.spawn(["wireguard-go", "-f", interface],
                         env={**os.environ, **WIREGUARD_GO_ENV, "LOG_LEVEL": "error"})
    sock = UAPI_DIR / f"{interface}.sock"
    deadline = time.monotonic() + wait_socket
    while not (sock.is_socket() and link_exists(runner, interface)):
        if child.poll() is not None or time.monotonic() > deadline or stop.is_set():
            runner.stop(child)
            return child.returncode or 1
        time.sleep(0.05)
    ready(f"{interface}: wireguard-go pid {child.pid}")
    while not stop.is_set() and child.poll() is None:
        stop.wait(0.5)
    runner.stop(child)
    return 0 if stop.is_set() else (child.returncode or 1)

