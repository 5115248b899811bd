"""The one command: build the process load, run every benchmark, write bench/RESULTS.md.

Stages, smallest table first (the load grows; it is stopped, by pid, whatever happens):
  sizes[0]  scaling point, TUI idle beside htop
  sizes[1]  figure 1 (snapshot), 2 (terminate), cgroup, GPU holders, 4 (TUI idle beside htop), 5 (keypress to
            screen) and 6 (launch to first frame) beside htop, 3 (duplicates, +Python processes)
  sizes[2]  scaling point, TUI idle beside htop, TUI peak RSS
A benchmark whose dependency has not landed reports "not available yet"; one that fails reports the error.
"""

from __future__ import annotations

import argparse
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import (
    cgroup_bench,
    duplicates_bench,
    gpuholders_bench,
    latency_bench,
    procstat,
    report,
    scaling,
    snapshot_bench,
    terminate_bench,
    tmux,
    tui_bench,
)
from bench.common import FULL, QUICK, Config, Section
from bench.load import Load
from bench.scaling import Point
from bench.tmux import AppRun

DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"
TITLES = {
    "snapshot": "1. Snapshot of the process table",
    "terminate": "2. Terminate a process group, time to confirmed death",
    "duplicates": "3. Duplicate detection over Python processes",
    "cgroup": cgroup_bench.TITLE,
    "gpuholders": gpuholders_bench.TITLE,
    "keys": latency_bench.KEY_TITLE,
    "launch": latency_bench.LAUNCH_TITLE,
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke run: small tables, few repetitions (~20 s)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results file (default {DEFAULT_OUT})")
    p.add_argument("--token", help="marker token for the load's processes (default: random)")
    p.add_argument(
        "--only",
        default="",
        metavar="FIGURES",
        help=f"comma-separated figures to run ({', '.join(FIGURES)}; 'keys' is figures 5 and 6); needs "
        "--out, so a partial run never replaces RESULTS.md",
    )
    return p


FIGURES = ("snapshot", "terminate", "cgroup", "duplicates", "gpuholders", "tui", "keys", "scaling")


class Runner:
    def __init__(self, cfg: Config, load: Load, only: frozenset[str] = frozenset()) -> None:
        self.cfg = cfg
        self.load = load
        self.only = only  # empty: every figure
        self.apps_wanted = False
        self.tui_ok = False
        self.sections: dict[str, Section] = {}
        self.loads: list[str] = [procstat.loadavg()]
        self.log_t0 = time.monotonic()

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.log_t0:6.1f}s] {msg}", flush=True)

    def want(self, figure: str) -> bool:
        return not self.only or figure in self.only

    def guarded(self, key: str, fn: Callable[[], Section | None], missing: str | None = None) -> None:
        title = TITLES.get(key, key)
        if missing:
            self.sections[key] = report.not_available(key, title, missing)
            self.log(f"{key}: not available yet ({missing})")
            return
        self.log(f"{key} ...")
        try:
            sec = fn()
        except Exception as e:  # noqa: BLE001 - one failing benchmark must not stop the others
            sec = Section(key, title, status="failed", reason=f"{type(e).__name__}: {e}")
            sec.notes.append(
                "Traceback (last lines): `"
                + " | ".join(traceback.format_exc().strip().splitlines()[-4:])
                + "`"
            )
            self.log(f"{key}: FAILED {e}")
        if sec is not None:
            self.sections[key] = sec
        self.loads.append(procstat.loadavg())

    def resize(self, size: int) -> int:
        t = time.monotonic()
        n = self.load.resize(size)
        self.log(
            f"table: {n:,} processes ({self.load.sleepers:,} sleepers of ours) in {time.monotonic() - t:.1f} s"
        )
        return n

    def point(self, p: Point, *, snapshot: bool = True) -> None:
        def go() -> None:
            if snapshot:
                scaling.measure_snapshot(p, self.cfg.scaling_reps)
            scaling.measure_refresh(p, self.cfg.scaling_reps)

        self.guarded(f"scaling-{p.size}", go)

    def apps(self, window: float, tag: str, tui_ok: bool) -> dict[str, AppRun] | None:
        out: dict[str, AppRun] | None = None

        def go() -> None:
            nonlocal out
            out = tui_bench.run_apps(self.load, self.cfg, window, tag, tui_ok)

        self.guarded(f"apps-{tag}", go)
        return out

    def keys(self, table: int) -> None:
        """Figures 5 and 6 (keypress latency, launch to first frame), from one tmux run at the main table."""
        why = latency_bench.available()
        if why:
            self.sections["keys"] = latency_bench.key_section(self.cfg, None, table, why)
            self.sections["launch"] = latency_bench.launch_section(self.cfg, None, table, why)
            self.log(f"keys, launch: skipped ({why})")
            return

        def go() -> Section:
            res, launches, n = latency_bench.measure(self.load, self.cfg, self.log)
            self.sections["launch"] = latency_bench.launch_section(self.cfg, launches, n, None)
            return latency_bench.key_section(self.cfg, res, n, None)

        self.guarded("keys", go)
        if "launch" not in self.sections:  # it failed with the key figure
            failed = self.sections["keys"]
            self.sections["launch"] = Section(
                "launch", latency_bench.LAUNCH_TITLE, status=failed.status, reason=failed.reason
            )

    def run(self) -> list[Section]:
        cfg, want = self.cfg, self.want
        points = [Point(s) for s in cfg.sizes]
        tui_missing = tui_bench.available()
        refresh_missing = (
            None if _refresh_ok() else "procguard.tui's LiveBackend / build_rows: not available yet"
        )
        apps_possible = tmux.missing() is None and (tui_missing is None or tui_bench.htop_available() is None)
        self.apps_wanted = apps_possible and (want("tui") or want("scaling"))
        self.tui_ok = tui_missing is None
        runs: list[dict[str, AppRun] | None] = [None, None, None]
        if want("scaling") or want("tui"):
            runs[0] = self.outer_stage(points[0], cfg.tui_small_window or cfg.tui_scaling_window, "small")
        table = self.main_stage(points[1])
        if self.apps_wanted:
            runs[1] = self.apps(cfg.tui_window, "idle", self.tui_ok)
            points[1].apps = runs[1] or {}
        if want("keys"):
            self.keys(table)
        if want("duplicates"):
            self.guarded(
                "duplicates", lambda: duplicates_bench.run(self.load, cfg), duplicates_bench.available()
            )
        if want("scaling") or want("tui"):
            runs[2] = self.outer_stage(points[2], cfg.tui_scaling_window, "big")
        if want("tui"):
            self.sections["tui"] = tui_bench.section(
                cfg,
                runs,
                (points[0].table if runs[0] else None, table, points[2].table if runs[2] else None),
                tui_missing,
            )
        if want("scaling"):
            self.sections["scaling"] = scaling.section(points, refresh_missing, cfg.tui_interval)
        self.loads.append(procstat.loadavg())  # before the cleanup: SIGKILLing thousands at once spikes it
        order = [
            k
            for k in (
                "snapshot",
                "terminate",
                "cgroup",
                "duplicates",
                "gpuholders",
                "tui",
                "keys",
                "launch",
                "scaling",
            )
            if k in self.sections
        ]
        out = [self.sections[k] for k in order]
        # Failures of helper stages (scaling points, tmux runs) are reported with the figure they feed.
        for k, s in self.sections.items():
            if k not in order and s.status != "ok":
                target = self.sections.get("tui" if k.startswith("apps") else "scaling") or (out or [s])[0]
                target.notes.append(f"{k}: {s.status}: {s.reason}")
        return out

    def outer_stage(self, point: Point, window: float, tag: str) -> dict[str, AppRun] | None:
        """The smallest or the biggest table: a scaling point and the apps side by side (not in --quick)."""
        point.table = self.resize(point.size)
        if self.want("scaling"):
            self.point(point)
        if self.cfg.quick or not self.apps_wanted:
            return None
        runs = self.apps(window, tag, self.tui_ok)
        point.apps = runs or {}
        return runs

    def main_stage(self, point: Point) -> int:
        """The main table: figures 1, 2, the cgroup and GPU-holder figures; returns the table's size after them."""
        cfg, want = self.cfg, self.want
        self.resize(cfg.main_size)
        if want("snapshot"):
            self.guarded("snapshot", lambda: snapshot_bench.run(cfg), snapshot_bench.available())
        snap = self.sections.get("snapshot")
        if snap is not None and snap.data:
            point.snapshot, point.table = snap.data["stats"], snap.data["table"]
            if want("scaling"):
                self.point(point, snapshot=False)
        elif want("scaling"):
            self.point(point)
        if want("terminate"):
            self.guarded(
                "terminate", lambda: terminate_bench.run(self.load, cfg), terminate_bench.available()
            )
        if want("cgroup"):
            self.guarded("cgroup", lambda: cgroup_bench.run(self.load, cfg), cgroup_bench.available())
        if want("gpuholders"):
            self.guarded(
                "gpuholders",
                lambda: gpuholders_bench.run(self.load, cfg, (cfg.main_size,)),
                gpuholders_bench.available(),
            )
        return self.resize(cfg.main_size)  # as it was before the stages that change the table


def _refresh_ok() -> bool:
    try:
        from procguard.tui.model import ViewState, build_rows  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return tui_bench.live_backend() is not None


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    only = frozenset(x.strip() for x in args.only.split(",") if x.strip())
    unknown = sorted(only - set(FIGURES))
    if unknown:
        parser.exit(
            2, f"python -m bench: --only: unknown figure {unknown[0]!r} (one of {', '.join(FIGURES)})\n"
        )
    if only and args.out == DEFAULT_OUT:
        parser.exit(2, "python -m bench: --only needs --out PATH (a partial run never replaces RESULTS.md)\n")
    cfg = QUICK if args.quick else FULL
    t0 = time.monotonic()
    env = report.environment()
    leftovers: list[int] = []
    with Load(args.token) as load:
        runner = Runner(cfg, load, only)
        runner.log(f"load token {load.token}; {'quick' if cfg.quick else 'full'} suite")
        try:
            sections = runner.run()
        finally:
            load.close()
            leftovers = load.leftovers()
    wall = time.monotonic() - t0
    loads = runner.loads
    busiest = max(float(x.split()[0]) for x in loads)
    env["suite wall time"] = f"{wall // 60:.0f} min {wall % 60:.0f} s" + (
        " (--quick smoke run)" if cfg.quick else ""
    )
    env["load average (1/5/15 min)"] = (
        f"start {loads[0]}; end (before cleanup) {loads[-1]}; highest 1-min during the run {busiest:.2f}"
    )
    env["processes of ours left after cleanup"] = str(len(leftovers))
    if only:
        env["figures"] = f"only {', '.join(sorted(only))} (--only: a partial run)"
    notes = []
    cpus = os.cpu_count() or 1
    start_load = float(loads[0].split()[0])
    # The suite's own load (thousands of processes, the TUI and htop side by side) raises the load average by
    # itself; only work that was there before it started says the machine was shared.
    if start_load > 0.5 * cpus:
        notes.append(
            f"The machine was busy when this run started (1-min load average {start_load:.1f} on {cpus} "
            f"CPUs, up to {busiest:.1f} during the run): other work ran alongside. Absolute times are "
            "perturbed; the ratios compare methods measured in the same run, interleaved."
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.render(env, sections, notes))
    runner.log(f"wrote {args.out} in {wall:.0f} s; leftovers: {len(leftovers)}")
    if leftovers:
        print(f"LEFTOVER processes with token {load.token}: {leftovers}", flush=True)
        return 1
    return 0
