"""Apply stage: run the commands reconciler.engine.commands built for a Plan, through the Runner.

What runs, and in which order, is decided there (pure, shown by `apply --dry-run`); this
module only executes it: processes and their stdin, requests on the wireguard-go control
socket, nf_tables netlink batches, atomic file writes. The one thing it adds is where key files live: a command's
KeyFile arguments become paths of 0600 files in a private 0700 directory, created just
before the commands of a step that need them and removed right after, so secrets never
reach argv.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.engine.commands import (
    BIG_PLAN,
    Command,
    Exec,
    KeyFile,
    NftElements,
    Step,
    StepFailed,
    UapiSet,
    WriteFile,
    iter_steps,
)
from reconciler.engine.hoststate import Secrets
from reconciler.engine.plan import Plan
from reconciler.engine.runner import Runner

__all__ = ["ApplyTarget", "StepFailed", "apply_plan", "prepare", "run_commands", "secret_dir"]


@dataclass(frozen=True)
class ApplyTarget:
    """Where and with what: the interface, the runner, the keys and the config file text."""

    runner: Runner
    interface: str
    secrets: Secrets
    # What WriteConfig writes (None with digest None = delete). It holds the private key and
    # every PSK, so it stays out of the repr (tracebacks, logs).
    config_text: str | None = field(default=None, repr=False)
    use_uapi: bool | None = None  # None: use the control socket if the interface has one

    @property
    def uapi(self) -> bool:
        return self.runner.has_uapi(self.interface) if self.use_uapi is None else self.use_uapi


PEERS_BESIDE_MIN = BIG_PLAN  # plans this big run their peer step beside the steps after it
# The steps after the peers that touch no peer: they may run while the peers are taken.
BESIDE_PEERS = ("elements", "routes", "config")


def prepare(plan: Plan, target: ApplyTarget) -> Iterator[Step]:
    """The plan's steps for apply_plan. A big plan's are being built from now on, in a
    thread (the engine asks before its snapshot and checkpoint, so a 16k-peer request is
    ready when the firewall's structure is loaded); a small plan's as apply reaches them."""
    steps = iter_steps(plan, target.interface, target.secrets, uapi=target.uapi,
                       config_text=target.config_text)
    return _built_ahead(steps) if len(plan) >= PEERS_BESIDE_MIN else steps


def apply_plan(plan: Plan, target: ApplyTarget,
               on_step: Callable[[str], None] | None = None, *,
               steps: Iterator[Step] | None = None,
               meanwhile: Callable[[], None] | None = None) -> list[str]:
    """Run the plan's steps in order; returns the steps run. Raises StepFailed(step, cause).

    `steps` are prepare(plan, target)'s (made here when not given). A step that cannot be
    built fails at its place in the order, like one whose command fails: iter_steps is
    lazy, and a big plan's steps, built ahead, still raise in order.
    `on_step(name)` is told of each step done (the engine starts a read-back early); for a
    big plan's peer step that is from its own thread. `meanwhile()` runs once on this
    thread when the steps beside the peers are done and it would only wait for them (or
    after the last step); not when a step failed.

    A big plan (a cold converge) runs its peer step (wireguard-go taking 16k peers: ~1.3 s on
    one core) in a thread, beside the steps that follow it and touch no peer (BESIDE_PEERS):
    they are done by the time the peers are, instead of competing with the read-back that
    starts then. A route to a LAN whose peer is not there yet leads into the interface,
    where it is dropped; a peer whose map elements are not loaded yet only reaches ping. Any
    step after those waits for the peers; a failure of either is raised only once both are
    done (the peers' first: it comes first in the order)."""
    done: list[str] = []
    if plan.empty:
        return done
    if steps is None:
        steps = prepare(plan, target)
    big = len(plan) >= PEERS_BESIDE_MIN
    beside: _Beside | None = None

    def caught_up() -> None:
        nonlocal meanwhile
        if meanwhile is not None:
            work, meanwhile = meanwhile, None
            work()

    try:
        for step in steps:  # raises StepFailed itself for a step it cannot build
            if beside is not None and step.name not in BESIDE_PEERS:
                caught_up()
                beside.join()
                beside = None
            if step.name == "peers" and big:
                beside = _Beside(target.runner, step, on_step)
                done.append(step.name)
                continue
            try:
                run_commands(target.runner, step.commands)
            except Exception as exc:  # any failure names its step; the engine rolls back
                raise StepFailed(step.name, exc) from exc
            done.append(step.name)
            if on_step is not None:
                on_step(step.name)
        caught_up()
    except BaseException:
        if beside is not None:
            beside.join()  # its failure, if any, is the earlier one: raised instead
        raise
    if beside is not None:
        beside.join()
    return done


def _built_ahead(steps: Iterator[Step]) -> Iterator[Step]:
    """`steps`, being built from now on in a thread, ahead of their turn. Building a big
    plan's peer step (16k peers' request text, ~50 ms) then overlaps the engine's snapshot
    and the firewall's `nft -f`. Building is pure, so only the time moves: steps still come
    in order, and one that cannot be built raises its StepFailed at its own turn, after the
    steps before it ran."""
    built: queue.SimpleQueue[Step | BaseException | None] = queue.SimpleQueue()

    def build() -> None:
        try:
            for step in steps:
                built.put(step)
        except BaseException as exc:  # noqa: BLE001 - raised in order by the consumer
            built.put(exc)
            return
        built.put(None)

    threading.Thread(target=build, name="apply-build", daemon=True).start()
    return _in_order(built)


def _in_order(built: queue.SimpleQueue[Step | BaseException | None]) -> Iterator[Step]:
    while (item := built.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item


class _Beside:
    """A step running in its own thread; join() waits for it and raises its StepFailed."""

    def __init__(self, runner: Runner, step: Step, on_step: Callable[[str], None] | None) -> None:
        self.step = step
        self.error: BaseException | None = None

        def work() -> None:
            try:
                run_commands(runner, step.commands)
            except BaseException as exc:  # noqa: BLE001 - raised by join() in the caller
                self.error = exc
                return
            if on_step is not None:
                on_step(step.name)

        self.thread = threading.Thread(target=work, name=f"apply-{step.name}", daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise StepFailed(self.step.name, self.error) from self.error


def run_commands(runner: Runner, commands: tuple[Command, ...]) -> None:
    """Run commands in order. Key files share one private directory that exists from the
    first command needing one until the last such command of this batch has run."""
    last_keyed = max((i for i, c in enumerate(commands)
                      if isinstance(c, Exec) and c.key_files), default=-1)
    with ExitStack() as stack:
        directory: Path | None = None
        for i, command in enumerate(commands):
            if isinstance(command, Exec):
                if command.key_files and directory is None:
                    directory = stack.enter_context(secret_dir())
                argv = [_key_file(directory, a) if isinstance(a, KeyFile) else a
                        for a in command.argv]
                runner.run(argv, stdin=command.stdin, write=True)
                if i == last_keyed:
                    stack.close()
            elif isinstance(command, UapiSet):
                runner.uapi(command.interface, command.request, write=True)
            elif isinstance(command, WriteFile):
                runner.write_file(Path(command.path), command.content, command.mode)
            elif isinstance(command, NftElements):
                runner.nft_elements(command.messages, command.stdin)


@contextmanager
def secret_dir() -> Iterator[Path]:
    """A private 0700 directory for key files handed to `wg` by path (never argv, never logs)."""
    path = Path(tempfile.mkdtemp(prefix="tunnelctl-", dir="/run" if os.access("/run", os.W_OK)
                                 else None))
    try:
        os.chmod(path, 0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _key_file(directory: Path | None, key_file: KeyFile) -> str:
    assert directory is not None  # opened before the first command with a key file
    fd = os.open(directory / key_file.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key_file.content)
    return str(directory / key_file.name)
