"""Static checks are part of the suite (so the README's one test command runs them): ruff lint (with the
complexity limit of 15 from pyproject), ruff format, and mypy over core/ and tui/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DIRS = [d for d in ("core", "tui", "tests", "bench") if (ROOT / d).is_dir()]


def _run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=300)


def test_ruff_clean() -> None:
    out = _run(str(BIN / "ruff"), "check", *DIRS)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_clean() -> None:
    out = _run(str(BIN / "ruff"), "format", "--check", *DIRS)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_clean(tmp_path: Path) -> None:
    # core/ and tui/ install as procguard.core / procguard.tui through package-dir, which mypy can't follow
    # (the editable install is an import hook): a folder of links gives it the installed layout.
    (tmp_path / "procguard").mkdir()
    (tmp_path / "procguard" / "core").symlink_to(ROOT / "core")
    (tmp_path / "procguard" / "tui").symlink_to(ROOT / "tui")
    out = _run(
        str(BIN / "mypy"),
        "--config-file",
        str(ROOT / "pyproject.toml"),
        "--namespace-packages",
        "--explicit-package-bases",
        "--cache-dir",
        str(tmp_path / ".mypy_cache"),
        "-p",
        "procguard.core",
        "-p",
        "procguard.tui",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_complexity_limit_is_enforced() -> None:
    cfg = (ROOT / "pyproject.toml").read_text()
    assert '"C90"' in cfg and "max-complexity = 15" in cfg
