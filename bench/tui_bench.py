"""Figure 4: procguard-tui's idle CPU at a 1 s refresh beside htop on the same table in the same window (both
in tmux, 160×50), and its peak RSS (VmHWM) with the big table. Also the in-process refresh path the TUI runs per
tick (`LiveBackend.collect()` + `build_rows()`), used by the scaling table.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import tmux
from bench.common import NOT_AVAILABLE, Config, Goal, Section, Stats, interleaved, ms
from bench.load import Load
from bench.tmux import AppRun

RSS_GOAL = 150 * 1024 * 1024
TUI = "procguard-tui"
HTOP = "htop"  # the app's name in the results
HTOP_PROGRAM = os.environ.get("PGBENCH_HTOP", "htop")  # override to test the "htop is missing" path


def tui_program() -> Path:
    """The venv's `procguard-tui` entry point, or the program named by PGBENCH_TUI (e.g. a launcher for a copy
    of another commit, whose entry point may live in another module)."""
    override = os.environ.get("PGBENCH_TUI")
    return Path(override) if override else Path(sys.executable).parent / TUI


def available() -> str | None:
    """None when procguard-tui runs (its --version exits 0), else why not."""
    exe = tui_program()
    if not exe.exists():
        return f"{exe} is not installed"
    try:
        r = subprocess.run(
            [str(exe), "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return f"`{TUI} --version` did not finish in 60 s"
    if r.returncode != 0:
        return f"`{TUI} --version` exits {r.returncode}: {r.stdout.strip()[:200]}"
    return None


def htop_available() -> str | None:
    """None when htop can be measured beside the TUI (it and tmux are installed), else why not."""
    if shutil.which(HTOP_PROGRAM) is None:
        return f"htop is not installed (`{HTOP_PROGRAM}` not found; apt-get install -y htop)"
    return tmux.missing()


# Where the live backend has lived (the app's module layout changes; the bench follows it).
LIVE_BACKEND_MODULES = ("procguard.tui.backends.live", "procguard.tui.collector")


def live_backend() -> Any | None:
    """A fresh LiveBackend (the app's data source), or None when it can't be imported."""
    try:
        import procguard.tui as tui
    except Exception:  # noqa: BLE001
        return None
    home = [os.path.realpath(p) for p in tui.__path__]
    for name in LIVE_BACKEND_MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a module being rewritten may fail in any way
            continue
        # Only from the procguard.tui actually imported (an editable install can also find a module in another
        # checkout when PYTHONPATH points at a copy).
        if not any(os.path.realpath(mod.__file__ or "").startswith(h + os.sep) for h in home):
            continue
        cls = getattr(mod, "LiveBackend", None)
        if cls is not None:
            return cls()
    return None


def refresh_path() -> Callable[[], object] | None:
    """The TUI's per-tick work, warm: collect a Model (collector thread) and build the visible rows (UI)."""
    try:
        from procguard.tui.model import ViewState, build_rows
    except Exception:  # noqa: BLE001 - the TUI package is still being written
        return None
    backend = live_backend()
    if backend is None:
        return None
    state = ViewState()
    backend.collect()

    def tick() -> object:
        return build_rows(backend.collect(), state)

    return tick


def measure_refresh(reps: int) -> Stats | None:
    tick = refresh_path()
    if tick is None:
        return None
    return interleaved({"tick": tick}, reps)["tick"]


def run_apps(load: Load, cfg: Config, window: float, tag: str, with_tui: bool) -> dict[str, AppRun]:
    """procguard-tui (if available) and htop (if installed), concurrently, over one window."""
    apps: dict[str, list[str]] = {}
    env: dict[str, dict[str, str]] = {}
    if with_tui:
        apps[TUI] = [str(tui_program()), "--interval", f"{cfg.tui_interval:g}"]
    if tmux.missing() is not None:
        return {}
    if htop_available() is None:
        apps[HTOP] = [HTOP_PROGRAM, "-d", str(round(cfg.tui_interval * 10))]
        home = load.tmp / "htop-home"  # default settings, whatever the user's htoprc says
        home.mkdir(exist_ok=True)
        env[HTOP] = {"HOME": str(home)}
    if not apps:
        return {}
    return tmux.measure(
        load, apps, warmup=cfg.tui_warmup, window=window, interval=cfg.tui_interval, env=env, tag=tag
    )


IDLE_GOALS = (1.0, 0.75, 0.75)  # × htop at sizes[0], sizes[1], sizes[2] (500, 2,000, 5,000 in the full suite)


def section(
    cfg: Config,
    runs: Sequence[dict[str, AppRun] | None],
    tables: Sequence[int | None],
    tui_missing: str | None,
) -> Section:
    """runs/tables: the tmux runs and table sizes at sizes[0], sizes[1] (the main table) and sizes[2]."""
    sec = Section(
        "tui", f"4. procguard-tui idle CPU at a {cfg.tui_interval:g} s refresh beside htop; peak RSS"
    )
    no_tmux = tmux.missing()
    no_htop = htop_available()
    if tui_missing:
        sec.status, sec.reason = NOT_AVAILABLE, tui_missing
    elif no_tmux:
        sec.status, sec.reason = "skipped", no_tmux
    sec.intro = (
        "Both apps run at the same time in one tmux server "
        f"({tmux.WIDTH}×{tmux.HEIGHT}), on the same table, after a {cfg.tui_warmup:g} s warm-up; CPU = "
        "utime+stime of the app's process (all threads) from /proc over the window. `htop -d "
        f"{round(cfg.tui_interval * 10)}` with default settings (an empty HOME)."
    )
    sec.headers = [
        "app",
        "processes",
        "window s",
        "CPU s",
        "CPU % of a core",
        "CPU ms / refresh",
        "× htop",
        "VmHWM MB",
    ]
    # The table each window really ran against (other users' processes come and go), not the size asked for.
    tables = [
        next((r.table for r in (apps or {}).values() if r.table), n)
        for apps, n in zip(runs, tables, strict=True)
    ]
    for apps, n in zip(runs, tables, strict=True):
        apps = apps or {}
        h = apps.get(HTOP)
        for r in apps.values():
            x = f"{r.cpu_seconds / h.cpu_seconds:.2f}×" if h is not None and h.cpu_seconds > 0 else "–"
            sec.rows.append(
                [
                    r.name,
                    f"{n:,}" if n else "?",
                    f"{r.window:.1f}",
                    f"{r.cpu_seconds:.2f}",
                    f"{r.cpu_percent:.1f}",
                    ms(r.per_refresh),
                    x,
                    f"{r.vm_hwm / 2**20:.0f}" if r.vm_hwm else "?",
                ]
            )
    why = tui_missing or no_tmux or no_htop
    for i, (apps, n, goal) in enumerate(zip(runs, tables, IDLE_GOALS, strict=True)):
        size = f"{n:,}" if n else f"{cfg.sizes[i]:,}"
        if apps and TUI in apps and HTOP in apps:
            t, h = apps[TUI], apps[HTOP]
            f = t.cpu_seconds / h.cpu_seconds if h.cpu_seconds > 0 else float("inf")
            sec.goals.append(
                Goal(
                    f"TUI idle CPU at {size} processes vs htop, {t.window:.0f} s window",
                    f"{f:.2f}× ({ms(t.per_refresh)} vs {ms(h.per_refresh)} ms per refresh)",
                    f"≤ {goal:.2f}×",
                    f <= goal,
                )
            )
        else:
            value = (
                f"not measured: {why}"
                if why
                else "not measured: --quick (only the main table)"
                if cfg.quick and i != 1
                else "not measured (see below)"
            )
            sec.goals.append(Goal(f"TUI idle CPU at {size} processes vs htop", value, f"≤ {goal:.2f}×", None))
    if no_htop and not tui_missing and not no_tmux:
        sec.notes.append(f"htop was not measured: {no_htop}. procguard-tui's own figures are still shown.")
    big = runs[2] or {}
    rss_run = big.get(TUI) or (runs[1] or {}).get(TUI)
    at = tables[2] if big.get(TUI) else tables[1]
    if rss_run is not None and rss_run.vm_hwm:
        sec.goals.append(
            Goal(
                f"TUI peak RSS (VmHWM) at {at or 0:,} processes",
                f"{rss_run.vm_hwm / 2**20:.0f} MB",
                "< 150 MB",
                rss_run.vm_hwm < RSS_GOAL,
            )
        )
    else:
        sec.goals.append(
            Goal(
                "TUI peak RSS",
                f"not measured: {tui_missing or no_tmux}"
                if tui_missing or no_tmux
                else "not measured (see below)",
                "< 150 MB",
                None,
            )
        )
    if cfg.quick and not big:
        sec.notes.append(
            "--quick: idle CPU and peak RSS from the main-table run only (the full suite also runs "
            "the smallest and the biggest table)."
        )
    return sec
