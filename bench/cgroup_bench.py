"""Figure: end a forking, SIGTERM-ignoring job and confirm every process is dead: one write to `cgroup.kill`
(procguard `kill_cgroup`) vs freeze-then-kill of the job's process tree (procguard `kill(Target.tree(pid))`:
SIGSTOP each member, rescan the table until no new one appears, SIGKILL each, confirm through pidfds), the
baseline, measured in the same run, interleaved.

The job (a fresh cgroup per run, under the cgroup v2 hierarchy): `sh` that ignores SIGTERM (inherited by every
child: SIG_IGN survives fork and exec) starts N sleepers and one `setsid` escapee, then keeps forking a sleeper
every 10 ms while it is being ended. Time is from the call to its return with the job confirmed dead (kill_cgroup:
`cgroup.events` says `populated 0`; the tree kill: every member's pidfd readable); after each run the cgroup is
checked for anything left alive (a member the method missed), then emptied with cgroup.kill and removed.

Suite: `run(load, cfg)` (see the line to add in bench/run.py in the report). Standalone:
`.venv/bin/python -m bench.cgroup_bench [--quick] [--table N]` prints the figure. Needs root (or a delegated,
writable cgroup v2 hierarchy); otherwise the section says why it was skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bench.common import QUICK, Config, Goal, Section, Stats, ms, ratio
from bench.load import Load, LoadError

SH = "/bin/sh"
# Moves itself into the cgroup folder $1, then becomes the job (same pid: it is inside before it forks).
MOVE_AND_EXEC = 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"'
JOB = """trap "" TERM
i=0
while [ $i -lt "$1" ]; do sleep 120 & i=$((i+1)); done
setsid sleep 120 &
j=0
while [ $j -lt 3000 ]; do sleep 120 & j=$((j+1)); sleep 0.01; done
wait
"""
METHODS = ("cgroup.kill", "freeze-then-kill")
TITLE = "Cgroup: end a forking, SIGTERM-ignoring job, time to confirmed death"


def available() -> str | None:
    try:
        from procguard.core.cgroups import cgroup_mounts, kill_cgroup  # noqa: F401
        from procguard.core.signals import Target, kill  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"procguard.core.cgroups: {e}"
    return None


def _v2_problem() -> str | None:
    from procguard.core.cgroups import cgroup_mounts

    m = cgroup_mounts().v2
    if m is None:
        return "no cgroup v2 hierarchy is mounted"
    if not os.access(m.point, os.W_OK):
        return f"the cgroup v2 hierarchy at {m.point} is not writable (needs root or a delegated subtree)"
    return None


@dataclass(frozen=True)
class Run:
    seconds: float  # the call -> its return, the job confirmed dead
    members: int  # processes in the cgroup just before the call
    left: int  # processes the method left alive (found in the cgroup afterwards)
    how: str


def _read_procs(fs: str) -> list[int]:
    try:
        with open(os.path.join(fs, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _empty(fs: str) -> None:
    """cgroup.kill until the folder is empty (our own cgroup, only our job in it); never raises."""
    deadline = time.monotonic() + 10
    while _read_procs(fs) and time.monotonic() < deadline:
        with contextlib.suppress(OSError), open(os.path.join(fs, "cgroup.kill"), "w") as f:
            f.write("1")
        time.sleep(0.005)


@contextlib.contextmanager
def _cgroup(token: str) -> Iterator[tuple[str, str]]:
    from procguard.core.cgroups import cgroup_mounts

    m = cgroup_mounts().v2
    assert m is not None
    name = f"{token}-{secrets.token_hex(3)}"
    fs = os.path.join(m.point, name)
    os.mkdir(fs)
    try:
        yield fs, "/" + name
    finally:
        _empty(fs)
        with contextlib.suppress(OSError):
            os.rmdir(fs)


def _start_job(load: Load, fs: str, size: int) -> int:
    root = load.spawn([SH, "-c", MOVE_AND_EXEC, "sh", fs, SH, "-c", JOB, "job", str(size)], quiet=True)
    deadline = time.monotonic() + 60
    # Ready: the N sleepers, the escapee and at least one of the ongoing forks have exec'd.
    while time.monotonic() < deadline:
        if len(_read_procs(fs)) >= size + 3:
            return root
        time.sleep(0.005)
    raise LoadError(f"the job in {fs} never reached {size + 3} members")


def _kill_cgroup(path: str, root: int) -> str:
    from procguard.core.cgroups import kill_cgroup

    r = kill_cgroup(path)
    if not r.confirmed:
        raise LoadError(f"kill_cgroup did not confirm {path} empty: {r.summary()}")
    return f"{len(r.results)} killed via {r.method}"


def _kill_tree(path: str, root: int) -> str:
    from procguard.core.signals import Target, kill

    results = kill(Target.tree(root))
    return f"{sum(r.outcome.value == 'killed' for r in results)} killed of {len(results)}"


FNS: dict[str, Callable[[str, int], str]] = {"cgroup.kill": _kill_cgroup, "freeze-then-kill": _kill_tree}


def _one(load: Load, token: str, size: int, method: str) -> Run:
    with _cgroup(token) as (fs, path):
        root = _start_job(load, fs, size)
        try:
            members = len(_read_procs(fs))
            t = time.perf_counter()
            how = FNS[method](path, root)
            seconds = time.perf_counter() - t
            left = len(_read_procs(fs))  # zombies are not listed: only processes still alive
            return Run(seconds, members, left, how)
        finally:
            _empty(fs)
            load.stop([root])


def measure(load: Load, sizes: tuple[int, ...], reps: int, token: str) -> dict[tuple[int, str], list[Run]]:
    runs: dict[tuple[int, str], list[Run]] = {}
    for size in sizes:
        for i in range(reps):
            # Alternate which goes first, so neither always meets the machine in the same state.
            order = METHODS if i % 2 == 0 else METHODS[::-1]
            for method in order:
                runs.setdefault((size, method), []).append(_one(load, token, size, method))
    return runs


def _sizes(cfg: Config) -> tuple[int, ...]:
    return (cfg.group_size,) if cfg.quick else (cfg.group_size, 200)


def section(runs: dict[tuple[int, str], list[Run]], sizes: tuple[int, ...], reps: int, table: int) -> Section:
    sec = Section("cgroup", TITLE)
    sec.intro = (
        f"Process table during the run: {table:,} processes. {reps} runs per method and job size, "
        "alternating which goes first. Each job: N sleepers + 1 `setsid` escapee under an `sh` that ignores "
        "SIGTERM and forks a new sleeper every 10 ms throughout. Time: the call to its return, every "
        "process confirmed dead. *Left alive*: processes found in the cgroup after the method returned "
        "(summed over the runs)."
    )
    sec.headers = [
        "job",
        "method",
        "median ms",
        "min–max ms",
        "× freeze-then-kill",
        "members at the call (median)",
        "left alive",
        "last run",
    ]
    for size in sizes:
        base = Stats(tuple(r.seconds for r in runs[(size, "freeze-then-kill")])).median
        for method in METHODS:
            rs = runs[(size, method)]
            s = Stats(tuple(r.seconds for r in rs))
            label = (
                "procguard `kill_cgroup(path)` (cgroup.kill)"
                if method == "cgroup.kill"
                else "procguard `kill(Target.tree(pid))` (SIGSTOP rounds, then SIGKILL)"
            )
            sec.rows.append(
                [
                    f"{size} sleepers + escapee, forking",
                    label,
                    ms(s.median),
                    f"{ms(s.min)}–{ms(s.max)}",
                    ratio(s.median, base),
                    str(int(Stats(tuple(r.members for r in rs)).median)),
                    str(sum(r.left for r in rs)),
                    rs[-1].how,
                ]
            )
        cg = Stats(tuple(r.seconds for r in runs[(size, "cgroup.kill")])).median
        left = sum(r.left for r in runs[(size, "cgroup.kill")])
        sec.goals.append(
            Goal(
                f"end a forking {size}-sleeper job: cgroup.kill vs freeze-then-kill of the tree",
                f"{cg / base:.2f}× ({ms(cg)} vs {ms(base)} ms), {left} left alive",
                "≤ 1.0×, none left",
                cg <= base and left == 0,
            )
        )
    sec.data = {"runs": runs}
    return sec


def run(load: Load, cfg: Config) -> Section:
    why = _v2_problem()
    if why:
        return Section("cgroup", TITLE, status="skipped", reason=why)
    from bench import procstat

    reps = max(3, cfg.terminate_reps) if not cfg.quick else 2
    sizes = _sizes(cfg)
    table = procstat.count_processes()
    return section(measure(load, sizes, reps, load.token), sizes, reps, table)


def _print(sec: Section) -> None:
    print(f"## {sec.title}\n")
    if sec.status != "ok":
        print(f"**{sec.status}**: {sec.reason}")
        return
    print(sec.intro + "\n")
    print("| " + " | ".join(sec.headers) + " |")
    print("|" + "|".join(" --- " for _ in sec.headers) + "|")
    for r in sec.rows:
        print("| " + " | ".join(r) + " |")
    print()
    for g in sec.goals:
        print(f"- {g.figure}: {g.value} (goal {g.goal}: {'met' if g.met else 'MISSED'})")


def main(argv: list[str] | None = None) -> int:
    from bench.common import FULL

    p = argparse.ArgumentParser(
        prog="python -m bench.cgroup_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="one job size, 2 runs per method")
    p.add_argument("--table", type=int, default=0, help="top the process table up to N processes first")
    args = p.parse_args(argv)
    missing = available()
    if missing:
        print(f"not available: {missing}")
        return 1
    cfg = QUICK if args.quick else FULL
    with Load() as load:
        if args.table:
            load.resize(args.table)
        sec = run(load, cfg)
        load.close()
        left = load.leftovers()
    _print(sec)
    if left:
        print(f"LEFTOVER processes: {left}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
