"""procguard-tui entry point (the app lands with its own issue)."""

from __future__ import annotations

import sys


def main() -> None:
    print("procguard-tui: the terminal app is not available yet; use `procguard --help`", file=sys.stderr)
    sys.exit(1)
