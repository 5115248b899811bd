"""procguard.core's public API: every exported name resolves from the package, has a docstring, and
importing the package stays cheap (names load on first use)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import procguard.core as core

ROOT = Path(__file__).resolve().parent.parent


def test_every_public_name_resolves_and_is_documented() -> None:
    missing_doc = []
    for name in core.__all__:
        obj = getattr(core, name)
        module = sys.modules[obj.__module__] if hasattr(obj, "__module__") else None
        assert module is not None and module.__name__.startswith("procguard.core."), name
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not inspect.getdoc(obj):
            missing_doc.append(name)
    assert not missing_doc, f"public names without a docstring: {missing_doc}"


def test_all_lists_exactly_the_exports() -> None:
    assert core.__all__ == sorted(core._EXPORTS)


def test_unknown_names_raise_attribute_error() -> None:
    try:
        core.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_the_package_loads_only_what_it_must() -> None:
    code = (
        "import sys, procguard.core; "
        "print('procguard.core.gpu' in sys.modules, 'procguard.core.flush' in sys.modules, "
        "procguard.core.guard.__module__, procguard.core.held_locks.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "procguard.core.guard", "procguard.core.held_locks"]


def test_function_names_win_over_their_modules_in_any_import_order() -> None:
    code = (
        "import procguard.core.guard, procguard.core.held_locks, procguard.core.spawn; "
        "from procguard.core import guard, held_locks, spawn; from procguard.core.guard import Guard; "
        "print(callable(guard) and guard.__name__, held_locks.__name__, spawn.__name__, Guard.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["guard", "held_locks", "spawn", "Guard"]


def test_py_typed_ships_with_both_packages() -> None:
    assert (ROOT / "core" / "py.typed").is_file() and (ROOT / "tui" / "py.typed").is_file()
    cfg = (ROOT / "pyproject.toml").read_text()
    assert '"py.typed"' in cfg
