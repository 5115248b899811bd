"""Where procguard-tui's time goes: py-spy samples and Textual counters, idle and with cursor keys (issue 16).

    .venv/bin/pip install py-spy            # not a project dependency; only this script uses it
    .venv/bin/python -m bench.profile_tui [--table 500] [--seconds 30] [--rate 1000] [--out DIR]

Builds a load (bench/load.py) of `--table` processes, runs `procguard-tui --interval 1` in a private tmux server
(160×50, as the figures do) and, after a warm-up:
1. *timings*: `py-spy record --nonblocking --threads` at `--rate` Hz over `--seconds` idle, then again while a
   cursor key is sent every `--key-every` s (Down, then Up, 20 each, so the cursor also scrolls the table);
   the app's CPU (utime+stime from /proc) is read over the same windows. Samples are put in buckets (data
   collection, row building, filter/sort, set_rows, line rendering, compositor, layout, messages, ...) and
   scaled to the measured CPU: ms per 1 s refresh per bucket, plus the top functions.
2. *counters*: the same two phases with a fresh app started through bench/tui_probe.py (Textual internals
   wrapped to count widget refreshes, lines re-rendered and how many came out unchanged, messages, frames,
   bytes written to the terminal).
3. *first frame*: the probe's launch timeline at `--first-table` processes (process start → first write →
   first model → first write after it) and the cold first `collect()` split by part, in process.

Everything runs as the bench does (every process carries the run's token; the end-of-run leak check applies).
Prints a markdown report and writes it, the raw py-spy files and the probe's counters to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bench import procstat, tui_bench
from bench.load import Load
from bench.tmux import Tmux

PROBE = Path(__file__).resolve().parent / "tui_probe.py"

# (bucket, test on the stack's frames as "func (file:line)" strings). First match wins; order matters.
Frames = list[str]


def _has(frames: Frames, *needles: str) -> bool:
    return any(n in f for f in frames for n in needles)


COLLECT_PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("snapshot (core/snapshot, procfs)", ("core/snapshot.py", "core/procfs.py")),
    (
        "duplicates (core/duplicates, identity)",
        ("core/duplicates.py", "core/identity.py", "core/launchers.py"),
    ),
    (
        "locks (held_locks, stale lock files)",
        ("core/held_locks.py", "core/proclocks.py", "core/locks.py", "core/lockfile.py"),
    ),
    ("registry", ("core/registry.py",)),
    ("GPU", ("core/gpu.py", "core/nvml.py", "core/gpuholders.py")),
    ("make_model (tui model)", ("make_model",)),
]


# Innermost frames that mean the thread was blocked, not running: py-spy's idle detection misses some of them
# (a select with a timeout in the input thread, the output thread's condition wait).
_BLOCKED = (".select", ".wait", "Queue.get", ".poll", "_wait_for_tstate_lock")


def bucket(thread: str, frames: Frames) -> str:
    """The bucket of one sample (see the module docstring)."""
    if frames and frames[-1].partition(" (")[0].endswith(_BLOCKED):
        return "wait: blocked (select, condition wait; py-spy counted it as active)"
    if "textual-input" in thread:
        return "input thread (reads keys)"
    if "textual-output" in thread:
        return "output thread (writes to the terminal)"
    if _has(frames, "collect (", "_collect_loop", "Backend.collect"):
        for name, needles in COLLECT_PARTS:
            if _has(frames, *needles):
                return f"data: {name}"
        if _has(frames, "post_message", "call_soon_threadsafe"):
            return "data: posting the model (post_message)"
        return "data: other"
    if "MainThread" not in thread:
        return f"other thread ({thread.split(':')[-1].strip()})"
    return _main_bucket(frames)


def _main_bucket(frames: Frames) -> str:
    if _has(frames, "build_rows", "filter_rows", "sort_rows"):
        if _has(frames, "matches", "_filter", "filter_", "sort", "_key"):
            return "UI: filter/sort (inside build_rows)"
        return "UI: build_rows (row building)"
    if _has(frames, "set_rows"):
        return "UI: table set_rows (replace rows, index, cursor)"
    if _has(frames, "summary_markup", "Summary.show", "StatusLine.show", "status_text", "_show_status"):
        return "UI: summary / status line text"
    if _has(frames, "render_cells", "_render_row", "KeyedTable.render_line", "Table.render_line"):
        return "draw: table lines (KeyedTable.render_line → cells → strip)"
    if _has(frames, "_render_content", "to_strips", "Static.render", "Footer", "Tabs"):
        return "draw: other widgets' content (Static, Footer, Tabs)"
    if _has(frames, "_refresh_layout", "arrange", "_arrange", "reflow"):
        return "draw: layout / arrange"
    if _has(frames, "_display", "render_segments", "_render_buffer"):
        return "draw: terminal escape sequences (_display)"
    if _has(frames, "_compositor_refresh", "render_update", "_render_chops", "update_widgets"):
        return "draw: compositor (chops, cuts, strips)"
    if _has(frames, "stylesheet", "_update_styles", "update_styles", "css/"):
        return "draw: CSS / styles"
    if _has(
        frames,
        "_dispatch_message",
        "_process_messages",
        "_on_message",
        "post_message",
        "_flush_next",
        "on_timer",
        "_on_idle",
        "check_idle",
        "_tick",
    ):
        return "messages / timers / idle (rest)"
    return "other (main thread)"


def parse_raw(path: Path) -> list[tuple[str, Frames, int]]:
    """py-spy's raw (collapsed) output: 'thread (tid): name;frame;frame count' per line."""
    out = []
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        parts = stack.split(";")
        out.append((parts[0], parts[1:], int(n)))
    return out


def summarize(samples: list[tuple[str, Frames, int]], cpu_ms_per_refresh: float, top: int = 12) -> str:
    buckets: Counter[str] = Counter()
    selfs: Counter[str] = Counter()
    per_bucket: dict[str, Counter[str]] = {}
    for thread, frames, n in samples:
        b = bucket(thread, frames)
        buckets[b] += n
        if not b.startswith("wait:"):
            selfs[_short(frames[-1]) if frames else "?"] += n
            per_bucket.setdefault(b, Counter())[_short(frames[-1]) if frames else "?"] += n
    active = sum(n for b, n in buckets.items() if not b.startswith("wait:"))
    lines = [
        f"{active:,} active samples (+{buckets.total() - active:,} blocked in a select or a wait, left out); "
        f"scaled to {cpu_ms_per_refresh:.1f} ms CPU per refresh.",
        "",
        "| bucket | share | ms / refresh |",
        "| --- | --- | --- |",
    ]
    for b, n in sorted(buckets.items(), key=lambda kv: -kv[1]):
        if b.startswith("wait:"):
            continue
        lines.append(f"| {b} | {100 * n / active:.1f}% | {cpu_ms_per_refresh * n / active:.1f} |")
    lines += [
        "",
        f"Top {top} functions by own time (innermost frame):",
        "",
        "| function | share |",
        "| --- | --- |",
    ]
    for f, n in selfs.most_common(top):
        lines.append(f"| `{f}` | {100 * n / max(1, active):.1f}% |")
    lines += [
        "",
        "Inside the six biggest buckets, the top functions by own time (share of all active samples):",
        "",
    ]
    for b, _n in [kv for kv in buckets.most_common() if not kv[0].startswith("wait:")][:6]:
        fs = ", ".join(f"`{f}` {100 * n / max(1, active):.1f}%" for f, n in per_bucket[b].most_common(4))
        lines.append(f"- {b}: {fs}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"


# ---------------------------------------------------------------------------------------------- running


def _keys(tm: Tmux, name: str, seconds: float, every: float) -> int:
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        key = "Down" if (sent // 20) % 2 == 0 else "Up"
        tm._tmux("send-keys", "-t", name, key)
        sent += 1
        time.sleep(every)
    return sent


def _spy(
    load: Load, pid: int, seconds: float, rate: int, out: Path, during: Callable[[], object] | None = None
) -> tuple[float, float, object]:
    """py-spy over `seconds` while `during` runs; returns (app CPU seconds, window seconds, during's result)."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    c0, t0 = procstat.cpu_seconds(pid), time.monotonic()
    spy = load.spawn(
        [
            pyspy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            f"{seconds:g}",
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--threads",
            "--nonblocking",
            "-o",
            str(out),
        ],
        quiet=True,
    )
    result = during() if during is not None else None
    load.wait_child(spy, timeout=seconds + 60)
    c1, t1 = procstat.cpu_seconds(pid), time.monotonic()
    if c0 is None or c1 is None:
        raise RuntimeError("procguard-tui exited during the profile")
    return c1 - c0, t1 - t0, result


def timings(load: Load, args: argparse.Namespace, out: Path) -> str:
    tm = Tmux(load, "profile")
    try:
        pid = tm.start("app", [str(tui_bench.tui_program()), "--interval", f"{args.interval:g}"])
        tm.wait_drawn("app")
        time.sleep(args.warmup)
        refreshes = args.seconds / args.interval
        cpu, window, _ = _spy(load, pid, args.seconds, args.rate, out / "pyspy-idle.txt")
        idle_ms = 1000 * cpu / (window / args.interval)
        cpu_k, window_k, sent = _spy(
            load,
            pid,
            args.seconds,
            args.rate,
            out / "pyspy-keys.txt",
            lambda: _keys(tm, "app", args.seconds, args.key_every),
        )
        keys_ms = 1000 * cpu_k / (window_k / args.interval)
        n_keys = int(sent or 0)  # type: ignore[call-overload]
        per_key = (cpu_k - cpu * window_k / window) * 1000 / max(1, n_keys)
        text = [
            f"## Timings at {args.table:,} processes (py-spy {args.rate} Hz, {args.seconds:g} s per phase)",
            "",
            f"Idle: {1000 * cpu:.0f} ms CPU over {window:.1f} s = **{idle_ms:.1f} ms per refresh** "
            f"({refreshes:.0f} refreshes).",
            "",
            summarize(parse_raw(out / "pyspy-idle.txt"), idle_ms),
            "",
            f"With keys: {n_keys} cursor keys over {window_k:.1f} s (one every {args.key_every:g} s): "
            f"{1000 * cpu_k:.0f} ms CPU = {keys_ms:.1f} ms per second; **{per_key:.1f} ms per key** above idle.",
            "",
            summarize(parse_raw(out / "pyspy-keys.txt"), keys_ms),
        ]
        return "\n".join(text)
    finally:
        tm.close()


def _probe_env() -> dict[str, str]:
    """PGBENCH_TUI_MAIN for the probe in its pane (the pane gets only the load's environment)."""
    main = os.environ.get("PGBENCH_TUI_MAIN")
    return {"PGBENCH_TUI_MAIN": main} if main else {}


def _phase(records: list[dict], t0: float, t1: float) -> tuple[dict, dict, float]:
    """Counter deltas between the last dump before t0 and the last before t1; and the seconds between them."""
    before = [r for r in records if r["time"] <= t0]
    upto = [r for r in records if r["time"] <= t1]
    if not before or not upto:
        raise RuntimeError("the probe wrote no counters in time")
    a, b = before[-1], upto[-1]
    counts = {
        k: {n: v - a["counts"].get(k, {}).get(n, 0) for n, v in d.items()} for k, d in b["counts"].items()
    }
    times = {
        k: {n: v - a["times"].get(k, {}).get(n, 0.0) for n, v in d.items()} for k, d in b["times"].items()
    }
    return counts, times, b["time"] - a["time"]


def _counter_table(counts: dict, times: dict, secs: float, refreshes: float) -> str:
    per = max(1.0, refreshes)
    lines = [
        f"Over {secs:.0f} s ({per:.0f} refreshes); per refresh:",
        "",
        "| widget | refresh() calls | layout refreshes | lines re-rendered | of which unchanged |",
        "| --- | --- | --- | --- | --- |",
    ]
    widgets = set(counts.get("refresh", {})) | set(counts.get("lines", {}))
    for w in sorted(widgets, key=lambda w: -counts.get("lines", {}).get(w, 0)):
        r = counts.get("refresh", {}).get(w, 0)
        lay = counts.get("refresh_layout", {}).get(w, 0)
        n = counts.get("lines", {}).get(w, 0)
        same = counts.get("lines_unchanged", {}).get(w, 0)
        if r or n:
            lines.append(f"| {w} | {r / per:.1f} | {lay / per:.1f} | {n / per:.1f} | {same / per:.1f} |")
    frames = sum(counts.get("frames", {}).values())
    frame_t = sum(times.get("frames", {}).values())
    layouts = sum(counts.get("layouts", {}).values())
    layout_t = sum(times.get("layouts", {}).values())
    out = counts.get("output", {})
    lines += [
        "",
        f"- frames (compositor refreshes): {frames / per:.1f} per refresh, {1000 * frame_t / per:.1f} ms "
        f"per refresh ({1000 * frame_t / max(1, frames):.1f} ms each); layouts: {layouts / per:.1f}, "
        f"{1000 * layout_t / per:.1f} ms per refresh",
        f"- terminal output: {out.get('bytes', 0) / per / 1024:.1f} KiB in {out.get('writes', 0) / per:.1f} "
        "writes per refresh",
        "",
        "| message | per refresh | ms per refresh (dispatch wall time) |",
        "| --- | --- | --- |",
    ]
    msgs = counts.get("messages", {})
    for m in sorted(msgs, key=lambda m: -times.get("messages", {}).get(m, 0.0))[:14]:
        lines.append(
            f"| {m} | {msgs[m] / per:.1f} | {1000 * times.get('messages', {}).get(m, 0.0) / per:.1f} |"
        )
    return "\n".join(lines)


def _read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # the last line may be half written
    return out


def counters(load: Load, args: argparse.Namespace, out: Path) -> str:
    jsonl = out / "probe.jsonl"
    jsonl.unlink(missing_ok=True)
    tm = Tmux(load, "probe")
    try:
        tm.start(
            "app", [sys.executable, str(PROBE), str(jsonl), "--interval", f"{args.interval:g}"], _probe_env()
        )
        tm.wait_drawn("app")
        time.sleep(args.warmup)
        t0 = time.time()
        time.sleep(args.seconds)
        t1 = time.time()
        sent = _keys(tm, "app", args.seconds, args.key_every)
        t2 = time.time()
        time.sleep(1.5)  # the last dump after t2
        records = _read_records(jsonl)
        idle = _phase(records, t0, t1)
        keys = _phase(records, t1, t2)
    finally:
        tm.close()
    return "\n".join(
        [
            f"## Counters at {args.table:,} processes (bench/tui_probe.py)",
            "",
            "### Idle",
            "",
            _counter_table(*idle, idle[2] / args.interval),
            "",
            f"### With keys ({sent} cursor keys, one every {args.key_every:g} s; per refresh = per second)",
            "",
            _counter_table(*keys, keys[2] / args.interval),
        ]
    )


def first_frame(load: Load, args: argparse.Namespace, out: Path) -> str:
    n = load.resize(args.first_table)
    jsonl = out / "probe-launch.jsonl"
    jsonl.unlink(missing_ok=True)
    tm = Tmux(load, "launch")
    try:
        tm.start(
            "app", [sys.executable, str(PROBE), str(jsonl), "--interval", f"{args.interval:g}"], _probe_env()
        )
        time.sleep(4.0)
        records = _read_records(jsonl)
    finally:
        tm.close()
    events = records[-1]["events"] if records else {}
    lines = [
        f"## First frame at {n:,} processes",
        "",
        "Seconds from the process's start (kernel start time):",
        "",
        "| event | s |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v:.3f} |" for k, v in sorted(events.items(), key=lambda kv: kv[1])]
    lines += ["", cold_collect()]
    return "\n".join(lines)


def cold_collect() -> str:
    """The first collect() the app makes, timed by part, in this process (a fresh backend: cold caches)."""
    try:
        from procguard.core import duplicates, locks, registry
        from procguard.core.snapshot import Snapshotter
    except ImportError as e:
        return f"(cold collect not measured: {e})"
    parts: list[tuple[str, float]] = []

    def timed(name: str, fn: Callable[[], object]) -> object:
        t = time.perf_counter()
        r = fn()
        parts.append((name, time.perf_counter() - t))
        return r

    snap = timed("snapshot, cold (Snapshotter().take())", lambda: Snapshotter().take())
    timed("duplicate_report, cold identity cache", lambda: duplicates.duplicate_report(snap))  # type: ignore[arg-type]
    timed("held_locks()", lambda: list(locks.held_locks()))
    timed("stale_lock_files()", lambda: list(locks.stale_lock_files()))
    timed("registry.read_entries(all_users=True)", lambda: registry.read_entries(all_users=True))
    backend = tui_bench.live_backend()
    if backend is not None:
        try:
            timed(
                "the app's whole first collect() (fresh backend, same process: partly warm)", backend.collect
            )
        except Exception as e:  # noqa: BLE001 - the app is being rewritten; the parts above still count
            parts.append((f"the app's first collect() failed: {type(e).__name__}: {e}", 0.0))
    rows = [
        "The app's first `collect()` by part, in this process (cold unless said):",
        "",
        "| part | ms |",
        "| --- | --- |",
    ]
    rows += [f"| {name} | {1000 * s:.1f} |" for name, s in parts]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile_tui",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--table", type=int, default=500, help="processes in the table (default 500)")
    p.add_argument("--first-table", type=int, default=2000, help="table for the first-frame timeline (2000)")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds per phase (default 30)")
    p.add_argument("--rate", type=int, default=1000, help="py-spy samples per second (default 1000)")
    p.add_argument("--interval", type=float, default=1.0, help="the app's --interval (default 1)")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--key-every", type=float, default=0.1, help="seconds between cursor keys (default 0.1)")
    p.add_argument(
        "--out", type=Path, default=Path("/tmp/procguard-profile"), help="folder for the raw files"
    )
    p.add_argument("--skip", default="", help="comma-separated parts to skip: timings,counters,first")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    why = tui_bench.available()
    if why:
        print(f"procguard-tui is not available: {why}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    parts = [f"# procguard-tui profile (bench/profile_tui.py, {time.strftime('%Y-%m-%d %H:%M:%S')})", ""]
    with Load() as load:
        n = load.resize(args.table)
        parts.append(f"Table: {n:,} processes; load average at the start: {procstat.loadavg()}.")
        if "timings" not in skip:
            parts += ["", timings(load, args, args.out)]
        if "counters" not in skip:
            parts += ["", counters(load, args, args.out)]
        parts.append(f"\nLoad average after the {args.table:,}-process runs: {procstat.loadavg()}.")
        if "first" not in skip:
            parts += ["", first_frame(load, args, args.out)]
        load.close()
        left = load.leftovers()
    text = "\n".join(parts) + "\n"
    (args.out / "profile.md").write_text(text)
    print(text)
    if left:
        print(f"LEFTOVER processes: {left}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
