"""The hashed locks in requirements/ match pyproject.toml, and setup refuses stale ones."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)", re.MULTILINE)


def pins(name: str) -> dict[str, str]:
    return dict(PIN.findall((ROOT / "requirements" / name).read_text()))


def copy_project(tmp: Path) -> Path:
    (tmp / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "lockfile.py", tmp / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp)
    shutil.copytree(ROOT / "requirements", tmp / "requirements")
    return tmp


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(root / "scripts" / "lockfile.py"), "check"],
                          capture_output=True, text=True, check=False)


def test_the_committed_locks_match_pyproject() -> None:
    out = check(ROOT)
    assert out.returncode == 0, out.stderr


def test_every_locked_package_carries_hashes() -> None:
    for name in ("runtime.lock", "dev.lock", "build.lock"):
        text = (ROOT / "requirements" / name).read_text()
        blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
        assert blocks and all(PIN.match(b) for b in blocks), name  # every entry an exact pin
        for block in blocks:
            assert "--hash=sha256:" in block, (name, block[:80])


def test_runtime_is_the_dev_lock_without_the_tools() -> None:
    runtime, dev = pins("runtime.lock"), pins("dev.lock")
    assert {k: dev.get(k) for k in runtime} == runtime
    assert {"pytest", "mypy", "ruff"} <= dev.keys() and not {"pytest", "mypy"} & runtime.keys()


def test_a_changed_range_without_a_new_lock_fails_with_the_refresh_command(tmp_path: Path) -> None:
    root = copy_project(tmp_path)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"pydantic>=2.6,<3"', '"pydantic>=2.7,<3"'))
    out = check(root)
    assert out.returncode == 1
    assert "no longer match" in out.stderr and "./scripts/lock" in out.stderr


def test_edits_outside_the_dependency_ranges_keep_the_lock_valid(tmp_path: Path) -> None:
    root = copy_project(tmp_path)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("line-length = 100", "line-length = 99"))
    assert check(root).returncode == 0
