"""Architecture contracts: the model imports nothing internal, the pure stages
cannot reach the host, and only the runner (plus the lab's own process keeper) starts processes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "reconciler"
HOST_MODULES = {"subprocess", "socket", "os.system"}
PURE = ["model", "hoststate", "parsers", "plan", "render", "psk", "allocate", "validate"]


def imports(module: str) -> set[str]:
    tree = ast.parse((PKG / f"{module.replace('.', '/')}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ("." * node.level) + (node.module or "")
            found.add(base)
            found.update(f"{base}.{alias.name}" if node.module else f"{base}{alias.name}"
                         for alias in node.names)
    return found


def test_model_imports_nothing_internal() -> None:
    assert not {name for name in imports("model") if name.startswith(".")}


@pytest.mark.parametrize("module", PURE)
def test_pure_stages_cannot_touch_the_host(module: str) -> None:
    found = imports(module)
    assert not found & HOST_MODULES
    forbidden = {".runner", ".apply", ".engine", ".observe", ".runner.Runner"}
    assert not {name for name in found if name.split(".Runner")[0] in forbidden}


def test_only_the_runner_and_the_lab_start_processes() -> None:
    starters = {str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
                if "subprocess" in imports(str(p.relative_to(PKG))[:-3].replace("/", "."))}
    assert starters <= {"runner.py", "lab/processes.py", "lab/traffic.py"}, starters


def test_no_shell_anywhere() -> None:
    for path in PKG.rglob("*.py"):
        text = path.read_text()
        assert "shell=True" not in text.replace(" ", ""), path
        assert "os.system(" not in text, path
