"""Where a reconcile acts and with what: the host target (namespace, interface, the secret,
config, lock and state folders), its lock, and the desired state rendered for it from the
repo and the host's two secret files (the render itself is pure, engine.render).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from reconciler.engine import checkpoint
from reconciler.engine.files import LockHeld, pid_lock
from reconciler.engine.hostboot import DEFAULT_STATE_DIR, firewall_path
from reconciler.engine.hoststate import HostState, Secrets
from reconciler.engine.psk import read_host_secret
from reconciler.engine.render import render_host
from reconciler.repo.model import Gateway
from reconciler.repo.state import GatewayChoiceError, RepoState

PRIVATE_KEY_FILE = "private.key"
PSK_SECRET_FILE = "psk.secret"


class EngineError(RuntimeError):
    """A problem the operator must fix before the host can be touched (names the fix)."""


class LockBusy(EngineError):
    pass


@dataclass(frozen=True)
class HostTarget:
    netns: str | None = None
    interface: str | None = None  # overrides gateway.interface (labs use unique names)
    secret_dir: Path = Path("/etc/tunnelctl")  # private.key (base64), psk.secret (host secret)
    config_dir: Path = Path("/etc/wireguard")  # <interface>.conf is written here
    # Not a RuntimeDirectory: systemd removes that when the service stops, and a CLI apply
    # holding the old file could then run beside the restarted service.
    lock_dir: Path = DEFAULT_STATE_DIR / "locks"
    lock_timeout: float = 30.0  # seconds to wait for another apply to finish
    # Checkpoints and the persisted table. Default: /var/lib/tunnelctl on the host, and
    # <secret_dir>/../state for a namespace (a lab keeps its files in its own folder).
    state_dir: Path | None = None

    def config_path(self, interface: str) -> Path:
        return self.config_dir / f"{interface}.conf"

    def lock_path(self, interface: str) -> Path:
        return self.lock_dir / (f"{self.netns}.{interface}.lock" if self.netns
                                else f"{interface}.lock")

    @property
    def state_root(self) -> Path:
        if self.state_dir is not None:
            return self.state_dir
        return DEFAULT_STATE_DIR if self.netns is None else self.secret_dir.parent / "state"

    @property
    def checkpoint_dir(self) -> Path:
        return self.state_root / "checkpoints"

    def checkpoint_path(self, interface: str) -> Path:
        return checkpoint.marker_path(self.checkpoint_dir, self.netns, interface)

    @property
    def firewall_path(self) -> Path:
        return firewall_path(self.state_root, self.netns)


# ------------------------------------------------------------------------ desired state


def select_gateway(repo: RepoState, name: str | None) -> Gateway:
    try:
        return repo.gateway(name)
    except GatewayChoiceError as exc:
        raise EngineError(str(exc)) from None


def read_private_key(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise EngineError(f"{path}: gateway private key missing; run `tunnelctl bootstrap` "
                          "(or `tunnelctl lab up` for a lab)") from None
    try:
        ok = len(base64.b64decode(text, validate=True)) == 32
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        raise EngineError(f"{path}: not a WireGuard private key (base64 of 32 bytes)")
    return text


def desired_state(repo: RepoState, gateway: str | None,
                  target: HostTarget) -> tuple[HostState, Secrets]:
    """Render stage for one gateway: reads the two secret files, then renders (pure)."""
    gw = select_gateway(repo, gateway)
    private_key = read_private_key(target.secret_dir / PRIVATE_KEY_FILE)
    secret_path = target.secret_dir / PSK_SECRET_FILE
    try:
        host_secret = read_host_secret(secret_path)
    except FileNotFoundError:
        raise EngineError(f"{secret_path}: host PSK secret missing; run `tunnelctl bootstrap`"
                          ) from None
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    interface = target.interface or gw.interface
    return render_host(gw, repo.tunnels, interface=interface, private_key=private_key,
                       host_secret=host_secret, config_path=target.config_path(interface))


# ---------------------------------------------------------------------------- locking


@contextmanager
def host_lock(target: HostTarget, interface: str) -> Iterator[None]:
    """Exclusive flock on /run/tunnelctl/[<netns>.]<interface>.lock, waiting up to
    lock_timeout, so CLI applies and the service never run at once."""
    path = target.lock_path(interface)
    try:
        with pid_lock(path, wait=target.lock_timeout, mode=0o644):
            yield
    except LockHeld as exc:
        raise LockBusy(f"another tunnelctl apply (pid {exc.holder}) holds {path}") from None
