"""Argument types and output helpers shared by the command modules."""

from __future__ import annotations

import json
import pwd
import sys
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
