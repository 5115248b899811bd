"""Figure: finding GPU holders from the kernel (/proc/PID/fd) at 2,000 and 5,000 processes: procguard's
`HolderScanner.scan(snapshot)` cold (a fresh scanner: every fd of every process read) and warm (the next refresh:
one stat of /proc/PID/fd per process, fds read again only where their count changed), beside `fuser` on the same
device files (what users run: `fuser -v /dev/nvidia*`), measured in the same run, interleaved.

Without a GPU the device files are fake: character-device nodes made with mknod in a temp folder (pointing at
/dev/null's 1,3), held open by a few processes of ours; both sides must find exactly those (the right answer is
checked). The load's sleepers hold 3 fds each (stdin, stdout, stderr on /dev/null); real processes hold more, so
a cold scan costs more on a real desktop, while a warm scan's cost only grows with the process count.

Standalone: `.venv/bin/python -m bench.gpuholders_bench [--quick] [--sizes 2000,5000]`. Needs root for mknod.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable

from bench.common import Config, Goal, Section, Stats, interleaved, ms, ratio
from bench.load import Load, LoadError

NODES = ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm")
HOLDERS = 4
TITLE = "GPU holders from /proc/PID/fd"
HOLD = "import os, sys, time\nfds = [os.open(p, os.O_RDONLY) for p in sys.argv[1:]]\ntime.sleep(1800)\n"


def available() -> str | None:
    try:
        from procguard.core.gpuholders import HolderScanner  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"procguard.core.gpuholders: {e}"
    return None


def _make_nodes(folder: str) -> str | None:
    try:
        for n in NODES:
            os.mknod(os.path.join(folder, n), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        return "mknod of character devices needs root (CAP_MKNOD)"
    return None


def _fuser(paths: list[str]) -> set[int]:
    # fuser prints the pids on stdout (and names and access letters on stderr); exit 1 when nobody holds them.
    out = subprocess.run(
        ["fuser", *paths], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ).stdout
    return {int(x) for x in out.split() if x.isdigit()}


def _methods(
    paths: list[str], dev: str
) -> tuple[dict[str, Callable[[], object]], dict[str, Callable[[], set[int]]]]:
    from procguard.core.gpuholders import DevicePatterns, HolderScanner
    from procguard.core.snapshot import Snapshotter

    pat = DevicePatterns.under(dev)
    snapper = Snapshotter()
    snap = snapper.take()
    warm = HolderScanner(pat)
    warm.scan(snap)
    answers: dict[str, Callable[[], set[int]]] = {
        "cold": lambda: set(HolderScanner(pat).scan(snap)),
        "warm": lambda: set(warm.scan(snap)),
        "fuser": lambda: _fuser(paths),
    }
    timed: dict[str, Callable[[], object]] = {
        "procguard cold": answers["cold"],
        "procguard warm": answers["warm"],
        "procguard warm + snapshot": lambda: warm.scan(snapper.take()),
        "fuser": answers["fuser"],
    }
    return timed, answers


LABELS = {
    "procguard cold": "procguard `HolderScanner(patterns).scan(snapshot)`, fresh scanner (cold)",
    "procguard warm": "procguard `scan(snapshot)` again on the same scanner (warm: nothing changed)",
    "procguard warm + snapshot": "the same, with the warm process snapshot it needs (`Snapshotter.take()`)",
    "fuser": "`fuser` on the device files (subprocess)",
}


def measure_point(
    load: Load, size: int, reps: int, dev: str, holders: set[int]
) -> tuple[dict[str, Stats], int, dict[str, bool], int]:
    table = load.resize(size)
    paths = [os.path.join(dev, n) for n in NODES]
    timed, answers = _methods(paths, dev)
    right = {k: fn() == holders for k, fn in answers.items()}
    stats = interleaved(timed, reps)
    from procguard.core.gpuholders import DevicePatterns, HolderScanner
    from procguard.core.snapshot import process_snapshot

    s = HolderScanner(DevicePatterns.under(dev))
    s.scan(process_snapshot())
    return stats, table, right, s.stats.readlinks


def run(load: Load, cfg: Config, sizes: tuple[int, ...] | None = None) -> Section:
    if shutil.which("fuser") is None:
        return Section("gpuholders", TITLE, status="skipped", reason="fuser is not installed (psmisc)")
    dev = tempfile.mkdtemp(prefix=f"{load.token}-dev-")
    try:
        why = _make_nodes(dev)
        if why:
            return Section("gpuholders", TITLE, status="skipped", reason=why)
        paths = [os.path.join(dev, n) for n in NODES]
        holders = set()
        for i in range(HOLDERS):
            pid = load.spawn([sys.executable, "-S", "-c", HOLD, paths[i % 2], paths[2]], quiet=True)
            holders.add(pid)
        _wait_open(holders, dev)
        sizes = sizes or ((cfg.sizes[0],) if cfg.quick else (cfg.main_size, cfg.big_size))
        reps = max(3, cfg.scaling_reps)
        sec = Section("gpuholders", f"{TITLE} at {', '.join(f'{s:,}' for s in sizes)} processes")
        sec.intro = (
            f"{HOLDERS} processes of ours hold fake NVIDIA device files; the rest of the table is the "
            f"load. Median of {reps} runs each, interleaved. Ratio = median / median of `fuser` in the same "
            "run. *fd reads*: readlinks a cold scan makes."
        )
        sec.headers = [
            "table",
            "method",
            "median ms",
            "min–max ms",
            "× fuser",
            "right answer",
            "fd reads (cold)",
        ]
        for size in sizes:
            stats, table, right, links = measure_point(load, size, reps, dev, holders)
            base = stats["fuser"].median
            for k, s in stats.items():
                key = {"procguard cold": "cold", "procguard warm": "warm", "fuser": "fuser"}.get(k, "warm")
                sec.rows.append(
                    [
                        f"{table:,}",
                        LABELS[k],
                        ms(s.median),
                        f"{ms(s.min)}–{ms(s.max)}",
                        ratio(s.median, base),
                        "yes" if right[key] else "**no**",
                        f"{links:,}",
                    ]
                )
            warm = stats["procguard warm"].median
            sec.goals.append(
                Goal(
                    f"GPU holders at {table:,} processes: warm scan vs fuser",
                    f"{warm / base:.2f}× ({ms(warm)} vs {ms(base)} ms), cold "
                    f"{ms(stats['procguard cold'].median)} ms",
                    "≤ 1.0×, right answer",
                    warm <= base and all(right.values()),
                )
            )
        return sec
    finally:
        shutil.rmtree(dev, ignore_errors=True)


def _wait_open(pids: set[int], dev: str) -> None:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(any(_link(p, fd).startswith(dev) for fd in _fds(p)) for p in pids):
            return
        time.sleep(0.01)
    raise LoadError("the holders never opened the device files")


def _fds(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []


def _link(pid: int, fd: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    from bench.common import FULL, QUICK

    p = argparse.ArgumentParser(
        prog="python -m bench.gpuholders_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sizes", default="", help="comma-separated table sizes (default 2000,5000; quick 200)")
    args = p.parse_args(argv)
    missing = available()
    if missing:
        print(f"not available: {missing}")
        return 1
    cfg = QUICK if args.quick else FULL
    sizes = tuple(int(x) for x in args.sizes.split(",") if x) or None
    with Load() as load:
        sec = run(load, cfg, sizes)
        load.close()
        left = load.leftovers()
    print(f"## {sec.title}\n")
    if sec.status != "ok":
        print(f"**{sec.status}**: {sec.reason}")
    else:
        print(sec.intro + "\n")
        print("| " + " | ".join(sec.headers) + " |")
        print("|" + "|".join(" --- " for _ in sec.headers) + "|")
        for r in sec.rows:
            print("| " + " | ".join(r) + " |")
        print()
        for g in sec.goals:
            print(f"- {g.figure}: {g.value} (goal {g.goal}: {'met' if g.met else 'MISSED'})")
    if left:
        print(f"LEFTOVER processes: {left}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
