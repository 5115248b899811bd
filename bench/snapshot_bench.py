"""Figure 1: a snapshot of the process table: procguard vs `ps -eo ...` vs psutil.process_iter."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

from bench.common import Config, Goal, Section, Stats, interleaved, ms, ratio

PS_ARGV = ["ps", "-eo", "pid,ppid,pgid,sid,stat,rss,user,args"]
PSUTIL_ATTRS = ["pid", "ppid", "status", "memory_info", "username", "cmdline"]
GOAL = 1.0
STRETCH = 0.75


def available() -> str | None:
    try:
        from procguard.core.snapshot import Snapshotter  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "not there yet"
        return f"procguard.core.snapshot: {e}"
    return None


def run_ps() -> int:
    out = subprocess.run(PS_ARGV, stdout=subprocess.PIPE, check=True).stdout
    return out.count(b"\n") - 1


def run_psutil() -> int:
    """The same fields as the ps command, through psutil (pgid and sid are not psutil attributes)."""
    import psutil

    rows = []
    for p in psutil.process_iter(PSUTIL_ATTRS):
        info = p.info
        try:
            pgid, sid = os.getpgid(p.pid), os.getsid(p.pid)
        except OSError:
            pgid = sid = -1
        mem = info["memory_info"]
        rows.append(
            (
                info["pid"],
                info["ppid"],
                pgid,
                sid,
                info["status"],
                mem.rss if mem else 0,
                info["username"],
                info["cmdline"],
            )
        )
    return len(rows)


def methods() -> dict[str, Callable[[], object]]:
    from procguard.core.snapshot import Snapshotter

    warm = Snapshotter()
    warm.take()
    return {
        "ps": run_ps,
        "psutil": run_psutil,
        "procguard cold": lambda: Snapshotter().take(),
        "procguard warm": warm.take,
    }


LABELS = {
    "ps": "`ps -eo pid,ppid,pgid,sid,stat,rss,user,args` (subprocess, output read)",
    "psutil": "`psutil.process_iter` (same fields; pgid/sid via os.getpgid/getsid)",
    "procguard cold": "procguard `Snapshotter().take()` (fresh Snapshotter: cold)",
    "procguard warm": "procguard `take()` again on the same Snapshotter (warm caches)",
}


def measure(reps: int) -> tuple[dict[str, Stats], int]:
    from procguard.core.snapshot import Snapshotter

    stats = interleaved(methods(), reps)
    return stats, len(Snapshotter().take())


def run(cfg: Config) -> Section:
    stats, table = measure(cfg.snapshot_reps)
    sec = Section("snapshot", f"1. Snapshot of {cfg.main_size:,} processes")
    sec.intro = (
        f"Process table during the run: {table:,} processes. Median of {cfg.snapshot_reps} runs each, "
        "interleaved. Ratio = median / median of `ps` measured in the same run."
    )
    sec.headers = ["method", "median ms", "min ms", "max ms", "× ps"]
    ps = stats["ps"].median
    for k, s in stats.items():
        sec.rows.append([LABELS[k], ms(s.median), ms(s.min), ms(s.max), ratio(s.median, ps)])
    for k in ("procguard cold", "procguard warm"):
        r = stats[k].median / ps
        stretch = " (stretch met)" if r <= STRETCH else ""
        sec.goals.append(
            Goal(
                f"snapshot {cfg.main_size:,}: {k} vs ps",
                f"{r:.2f}× ({ms(stats[k].median)} ms){stretch}",
                f"≤ {GOAL:.2f}× (stretch {STRETCH:.2f}×)",
                r <= GOAL,
            )
        )
    pu = stats["psutil"].median
    sec.goals.append(
        Goal(
            f"snapshot {cfg.main_size:,}: procguard cold vs psutil.process_iter (same fields)",
            f"{stats['procguard cold'].median / pu:.2f}× ({ms(stats['procguard cold'].median)} vs "
            f"{ms(pu)} ms)",
            "– (reference)",
            None,
        )
    )
    sec.notes.append(f"psutil.process_iter is {pu / ps:.2f}× ps here (reference only; no goal).")
    sec.data = {"stats": stats, "table": table}
    return sec
