"""Shared fixtures. Lab tests (`@pytest.mark.lab`) build real network namespaces with
wireguard-go: they need root and are skipped, with the reason, only when not root. A missing
wireguard-go/wg/ip/nft is NOT a skip: those tests then fail, loudly."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TENANTS = REPO_ROOT / "tenants"
NOT_ROOT_REASON = ("lab test: needs root (network namespaces, wireguard-go, nftables); "
                   "run the suite as root, as CI does")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("lab") is not None and os.geteuid() != 0:
        pytest.skip(NOT_ROOT_REASON)


HOST_SECRET = bytes(range(32))  # the PSK host secret of `secret_dir`


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    """A secret dir holding a fixed psk.secret (0600 in 0700), as bootstrap makes one."""
    d = tmp_path / "secrets"
    d.mkdir(mode=0o700)
    (d / "psk.secret").write_text(base64.b64encode(HOST_SECRET).decode() + "\n")
    (d / "psk.secret").chmod(0o600)
    return d


@pytest.fixture
def tenants_repo(tmp_path: Path) -> Path:
    """A private copy of the shipped tenants/ example repo, free to edit."""
    dest = tmp_path / "repo"
    shutil.copytree(TENANTS, dest)
    return dest


class LabFactory:
    """Builds labs on demand and tears every one of them down, whatever happened."""

    def __init__(self) -> None:
        self.labs: list[Any] = []

    def __call__(self, repo: Path | str = TENANTS, **kwargs: Any) -> Any:
        from reconciler.lab import Lab

        lab = Lab(repo, **kwargs)
        self.labs.append(lab)
        return lab.up()

    def close(self) -> None:
        for lab in reversed(self.labs):
            lab.down()


def _factory() -> Iterator[Callable[..., Any]]:
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT_REASON)
    factory = LabFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def lab() -> Iterator[Callable[..., Any]]:
    """`lab(repo=tenants/, **Lab kwargs) -> Lab` (already up); removed after the test."""
    yield from _factory()


@pytest.fixture(scope="module")
def module_lab() -> Iterator[Callable[..., Any]]:
    """Like `lab`, but the labs live for the whole test module (build once, probe many times)."""
    yield from _factory()
