"""Argument types and output helpers shared by the command modules."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sys
import unicodedata
from typing import Any

from procguard.core.cli import UsageError
from procguard.core.sanitize import safe


def pid_arg(text: str) -> int:
    try:
        pid = int(text, 10)
    except ValueError:
        raise UsageError(f"invalid pid {text!r}: not a whole number") from None
    if pid <= 0:
        raise UsageError(f"invalid pid {text!r}: must be a positive number")
    return pid


def one_line(text: object) -> str:
    """Text from a process (a command line, a path, a name) on one row, safe for a terminal: the one sanitizer,
    `procguard.core.sanitize.safe` (newlines and other control characters escaped, e.g. `python -c` scripts)."""
    return safe(text)


def seconds_arg(flag: str, *, positive: bool = False):  # type: ignore[no-untyped-def]
    """`positive`: 0 is refused too (an interval, where 0 would mean a busy loop)."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise UsageError(f"invalid {flag} {text!r}: not a number of seconds") from None
        if v < 0 or v != v or v == float("inf") or (positive and v == 0):
            want = "> 0" if positive else ">= 0"
            raise UsageError(f"invalid {flag} {text!r}: must be a finite number of seconds {want}")
        return v

    return parse


def user_arg(text: str) -> int:
    """A user name (or numeric uid) that exists on this machine; returns the uid."""
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        if text.isdigit():
            return int(text)
        raise UsageError(f"unknown user {text!r}") from None


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=None, separators=(",", ":"))
    sys.stdout.write("\n")


def output_width(wide: bool = False) -> int | None:
    """Columns to cut text rows to when stdout is a terminal: `shutil.get_terminal_size` (COLUMNS when set, else
    the terminal's own width). None (whole rows) with --wide, or when stdout is a pipe or a file, as ps does:
    `grep` and scripts get whole command lines."""
    if wide:
        return None
    try:
        if not os.isatty(sys.stdout.fileno()):
            return None
    except (OSError, ValueError, AttributeError):
        return None
    return max(20, shutil.get_terminal_size().columns)


def _char_width(c: str) -> int:
    if unicodedata.combining(c):
        return 0
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


def cut(text: str, width: int | None) -> str:
    """`text` (already terminal-safe) cut to `width` terminal columns, ending in `…` when something was cut
    (wide characters count two columns). None: unchanged."""
    if width is None or (text.isascii() and len(text) <= width):
        return text
    # An encoding that has no ellipsis (a Latin-1 terminal) gets ">" rather than an error.
    mark = "…" if (getattr(sys.stdout, "encoding", "") or "").lower().replace("-", "") == "utf8" else ">"
    if text.isascii():
        return text[: max(0, width - 1)] + mark
    used = 0
    for i, c in enumerate(text):
        w = _char_width(c)
        if used + w > width - 1 and sum(_char_width(x) for x in text[i:]) > width - used:
            return text[:i] + mark
        used += w
    return text


def plural(n: int, one: str, many: str | None = None) -> str:
    """`1 file`, `2 files`, `0 processes`: counts in plain words."""
    return f"{n} {one if n == 1 else (many or one + 's')}"
