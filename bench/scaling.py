"""Figure 7: how snapshot and TUI refresh cost grow with the table (a table and an ASCII plot)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench import snapshot_bench, tui_bench
from bench.common import Section, Stats, ms
from bench.tmux import AppRun


@dataclass
class Point:
    """Everything measured at one table size."""

    size: int  # the size asked for
    table: int = 0  # processes actually in the table
    snapshot: dict[str, Stats] = field(default_factory=dict)
    refresh: Stats | None = None  # TUI per-tick path, in process
    apps: dict[str, AppRun] = field(default_factory=dict)  # tmux runs at this size (CPU per refresh)


def measure_snapshot(point: Point, reps: int) -> None:
    point.snapshot, point.table = snapshot_bench.measure(reps)


def measure_refresh(point: Point, reps: int) -> None:
    point.refresh = tui_bench.measure_refresh(reps)


SERIES = [
    ("ps", "ps"),
    ("psutil", "psutil"),
    ("procguard cold", "pg cold"),
    ("procguard warm", "pg warm"),
]


def _app_cell(run: AppRun | None, table: int) -> str:
    """CPU ms per refresh; the table it ran against when that differs from the row's (a shared machine)."""
    if run is None:
        return "–"
    differs = run.table and table and abs(run.table - table) > max(20, table // 20)
    return ms(run.per_refresh) + (f" (at {run.table:,})" if differs else "")


def _cell(s: Stats | None) -> str:
    return ms(s.median) if s is not None else "–"


def _plot(points: list[Point], series: list[tuple[str, dict[int, float]]], width: int = 50) -> str:
    top = max((v for _, vals in series for v in vals.values()), default=0.0)
    if top <= 0:
        return ""
    lines = [f"median ms, one bar per method and table size (full bar = {ms(top)} ms)"]
    for p in points:
        lines.append(f"{p.table or p.size:>6,} processes")
        for name, vals in series:
            v = vals.get(p.size)
            if v is None:
                continue
            bar = "#" * max(1, round(width * v / top))
            lines.append(f"  {name:<14} {bar} {ms(v)}")
    return "\n".join(lines)


def section(points: list[Point], refresh_missing: str | None, interval: float) -> Section:
    sec = Section("scaling", "7. Scaling: snapshot and TUI refresh cost by table size")
    sec.intro = (
        "Snapshot: median ms as in figure 1. TUI refresh (in process): one warm tick of the TUI's data "
        "path, `LiveBackend.collect()` + `build_rows()` (snapshot, duplicates, locks as due, registry, "
        "rows), median ms. TUI / htop CPU per refresh: CPU ms per "
        f"{interval:g} s refresh from the tmux runs (drawing included)."
    )
    sec.headers = [
        "processes",
        "ps",
        "psutil",
        "pg cold",
        "pg warm",
        "pg warm × ps",
        "TUI refresh (in process)",
        "TUI CPU / refresh",
        "htop CPU / refresh",
    ]
    for p in points:
        warm, ps = p.snapshot.get("procguard warm"), p.snapshot.get("ps")
        tui, htop = p.apps.get(tui_bench.TUI), p.apps.get(tui_bench.HTOP)
        sec.rows.append(
            [
                f"{p.table or p.size:,}",
                _cell(ps),
                _cell(p.snapshot.get("psutil")),
                _cell(p.snapshot.get("procguard cold")),
                _cell(warm),
                f"{warm.median / ps.median:.2f}×" if warm and ps else "–",
                _cell(p.refresh),
                _app_cell(tui, p.table),
                _app_cell(htop, p.table),
            ]
        )
    series: list[tuple[str, dict[int, float]]] = []
    for key, label in SERIES:
        series.append((label, {p.size: p.snapshot[key].median for p in points if key in p.snapshot}))
    series.append(("TUI refresh", {p.size: p.refresh.median for p in points if p.refresh is not None}))
    sec.extra = _plot(points, series)
    if refresh_missing:
        sec.notes.append(f"TUI columns: {refresh_missing}")
    missing_sizes = [p.size for p in points if not p.apps]
    if missing_sizes and len(missing_sizes) < len(points):
        sec.notes.append(f"No tmux run at {', '.join(f'{s:,}' for s in missing_sizes)} processes (--quick).")
    return sec
