"""Formatting for humans, one owner per rule: sizes, clock times, ages and procguard's version.

Every function returns plain text; text that came from a process is made safe by `sanitize.safe`, not here.
"""

from __future__ import annotations

import functools
import time

__all__ = ["age", "bytes_long", "bytes_short", "clock", "cpu", "version"]


def bytes_short(n: int | None, *, blank_zero: bool = False) -> str:
    """Compact sizes for table columns: 512B, 1.5K, 38.4M, 300G ("-" for unknown, "" for 0 if blank_zero)."""
    if n is None:
        return "-"
    if n == 0 and blank_zero:
        return ""
    v = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if abs(v) < 1024 or unit == "T":
            if unit == "B":
                return f"{int(v)}B"
            return f"{v:.1f}{unit}" if abs(v) < 100 else f"{v:.0f}{unit}"
        v /= 1024
    return f"{n}B"  # pragma: no cover


def bytes_long(n: int | None, unknown: str = "-") -> str:
    """Sizes in sentences: 512 B, 1.5 KiB, 3.0 GiB (`unknown` for None)."""
    if n is None:
        return unknown
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{int(v)} B" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{n} B"  # pragma: no cover


def clock(t: float | None) -> str:
    """Epoch seconds as a start time: HH:MM:SS today, a full date otherwise, '?' when unknown or out of range
    (metadata from another process can say anything)."""
    if t is None:
        return "?"
    try:
        when = time.localtime(t)
    except (OverflowError, OSError, ValueError):
        return "?"
    fmt = "%H:%M:%S" if when[:3] == time.localtime()[:3] else "%Y-%m-%d %H:%M:%S"
    return time.strftime(fmt, when)


def age(seconds: float) -> str:
    """Elapsed time, two units at most: 45s, 5m07s, 12m, 3h05m, 2d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s" if m < 10 else f"{m}m"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def cpu(v: float) -> str:
    """A CPU percentage for a column: one decimal below 1000."""
    return f"{v:.1f}" if v < 1000 else f"{v:.0f}"


@functools.lru_cache(maxsize=1)
def version() -> str:
    """procguard's installed version ("0+unknown" from a source tree without metadata)."""
    try:
        from importlib.metadata import version as dist_version

        return dist_version("procguard")
    except Exception:  # noqa: BLE001 - no installed metadata
        return "0+unknown"
