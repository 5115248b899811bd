"""ruff is part of the suite: the code stays lint-clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_clean() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    dirs = [d for d in ("core", "tui", "tests", "bench") if (ROOT / d).is_dir()]
    out = subprocess.run([str(ruff), "check", *dirs], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
