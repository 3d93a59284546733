"""Architecture checks that import-linter's contracts (pyproject.toml, run by ./scripts/test as
`lint-imports`) do not cover: the tree is only packages, no import cycles, no shell, and the
contracts themselves can fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "reconciler"
LAYERS = ["cli", "lab", "service", "operator", "gitops", "engine", "repo"]


def test_reconciler_holds_only_packages() -> None:
    loose = sorted(p.name for p in PKG.glob("*.py") if p.name not in {"__init__.py", "__main__.py"})
    assert not loose, f"modules belong in a stage package: {loose}"
    for name in LAYERS:
        doc = (PKG / name / "__init__.py").read_text()
        assert doc.startswith('"""') and "import" in doc.split('"""')[1], \
            f"reconciler/{name}/__init__.py must say what it owns and what it may import"


def test_no_import_cycles() -> None:
    graph = grimp.build_graph("reconciler")

    def related(a: str, b: str) -> bool:  # a package and its own modules (re-exports)
        return a.startswith(f"{b}.") or b.startswith(f"{a}.")

    cycles = {tuple(sorted((a, b)))
              for a in graph.modules
              for b in graph.find_modules_directly_imported_by(a)
              if b.startswith("reconciler.") and not related(a, b)
              and graph.chain_exists(importer=b, imported=a)}
    assert not cycles

def test_no_shell_anywhere() -> None:
    for path in PKG.rglob("*.py"):
        text = path.read_text()
        assert "shell=True" not in text.replace(" ", ""), path
        assert "os.system(" not in text, path


def test_the_contracts_catch_a_pure_module_that_reaches_the_host(tmp_path: Path) -> None:
    # A contract that cannot fail proves nothing: break one on a copy and watch it fail.
    shutil.copytree(PKG, tmp_path / "reconciler", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    plan = tmp_path / "reconciler" / "engine" / "plan.py"
    plan.write_text(plan.read_text() + "\nfrom reconciler.engine.runner import Runner  # noqa\n")
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                         check=False, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Pure stages cannot reach the host (no runner, subprocess, socket) BROKEN" in out.stdout
    assert "reconciler.engine.plan -> reconciler.engine.runner" in out.stdout
