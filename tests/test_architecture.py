"""Layout rules: core never imports textual or the TUI; nothing installs as top-level core/tui."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


FORBIDDEN_IN_CORE = ("textual", "procguard.tui", "tui", "torch", "ray")


def _imports(path: Path) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.lineno, node.module))
    return out


def test_import_contract_core_never_imports_textual_tui_or_torch() -> None:
    """Every import statement under core/, top-level or inside a function (torch is only ever looked up in
    sys.modules, never imported; ray only in core/cluster/, the Ray extra)."""
    bad = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        for line, mod in _imports(path):
            root = mod.split(".")[0]
            if any(mod == f or mod.startswith(f + ".") or root == f for f in FORBIDDEN_IN_CORE):
                if root == "ray" and "cluster" in path.relative_to(ROOT).parts:
                    continue
                bad.append(f"{path.relative_to(ROOT)}:{line}: import {mod}")
    assert not bad, "\n".join(bad)


def test_import_contract_catches_a_violation(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from textual.app import App\n")
    assert _imports(f) == [(2, "textual.app")]


def test_importing_core_loads_no_textual_and_no_torch() -> None:
    code = (
        "import sys, procguard.core, procguard.core.cli, procguard.core.signals, procguard.core.snapshot;"
        "import importlib; [importlib.import_module('procguard.core.'+m) for m in "
        "('locks','duplicates','guard','gpu','flush','registry') if importlib.util.find_spec('procguard.core.'+m)];"
        "bad=[m for m in ('textual','torch','pynvml') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_top_level_core_or_tui() -> None:
    code = "import importlib.util,sys; sys.exit(any(importlib.util.find_spec(m) for m in ('core','tui')))"
    assert subprocess.run([sys.executable, "-c", code], cwd="/").returncode == 0
    assert importlib.util.find_spec("procguard.core") is not None


def test_every_package_folder_is_installed() -> None:
    """A package folder missing from pyproject's `packages` imports from the checkout but not from a wheel or a
    non-editable install: every folder with an __init__.py under core/ and tui/ must be listed."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set()
    for top, pkg in (("core", "procguard.core"), ("tui", "procguard.tui")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            if "__pycache__" not in rel:
                found.add(".".join((pkg, *rel)))
    assert found == listed
