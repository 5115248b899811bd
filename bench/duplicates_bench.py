"""Figure 3: duplicate detection over Python processes: procguard vs resolving every argument with
`Path(arg).resolve()`, and whether each found the right groups (known, since bench/dupes_load.py built them).

The common approach (`common_detect`): for every process whose program looks like Python, resolve every argument
with `Path(arg).resolve()` (against *our* cwd, which is where it goes wrong), take the first that ends in `.py`
as the script, and group the processes by it.

Measured two ways, each side by side:
- detection: both sides get the same process snapshot (the command lines are the input); this is the goal's
  figure, since the goal's baseline is the resolving, not a particular way of listing processes;
- end to end: each side also lists the processes itself (the common approach through
  `psutil.process_iter(["cmdline"])`, procguard's `find_duplicates()` through its own incremental snapshot).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench import dupes_load
from bench.common import Config, Goal, Section, Stats, interleaved, ms
from bench.load import Load

if TYPE_CHECKING:
    from procguard.core.duplicates import DuplicateReport
    from procguard.core.snapshot import Snapshot

GOAL = 10.0


def available() -> str | None:
    try:
        from procguard.core.duplicates import find_duplicates  # noqa: F401
    except Exception as e:  # noqa: BLE001 - not landed yet, or mid-edit
        return f"procguard.core.duplicates.find_duplicates: {type(e).__name__}: {e}"
    return None


def _is_python(argv0: str) -> bool:
    return os.path.basename(argv0).startswith("python")


def _group(cmdlines: Iterable[tuple[int, Sequence[str]]]) -> list[set[int]]:
    by_script: dict[Path, set[int]] = {}
    for pid, cmd in cmdlines:
        if not cmd or not _is_python(cmd[0]):
            continue
        resolved = [Path(a).resolve() for a in cmd[1:]]
        script = next((r for r in resolved if r.suffix == ".py"), None)
        if script is not None:
            by_script.setdefault(script, set()).add(pid)
    return [pids for pids in by_script.values() if len(pids) > 1]


def common_detect(snap: Snapshot) -> list[set[int]]:
    """The common approach over a given snapshot's command lines."""
    return _group((p.pid, p.cmdline) for p in snap)


def common_end_to_end() -> list[set[int]]:
    """The common approach, listing the processes itself with psutil."""
    import psutil

    return _group((p.pid, p.info["cmdline"]) for p in psutil.process_iter(["cmdline"]))


def _pids(report: DuplicateReport) -> list[set[int]]:
    return [{i.pid for i in g.instances} for g in report.groups]


def methods(snap: Snapshot) -> dict[str, Callable[[], list[set[int]]]]:
    from procguard.core import duplicates
    from procguard.core.identity import IdentityResolver

    return {
        "common": lambda: common_detect(snap),
        "procguard cold": lambda: _pids(duplicates.duplicate_report(snap, resolver=IdentityResolver())),
        "procguard": lambda: _pids(duplicates.duplicate_report(snap)),
        "common e2e": common_end_to_end,
        "procguard e2e": lambda: [{i.pid for i in g.instances} for g in duplicates.find_duplicates()],
    }


LABELS = {
    "common": "common: `Path(arg).resolve()` of every argument of every Python process",
    "procguard cold": "procguard `duplicate_report(snap, resolver=IdentityResolver())` (fresh identity cache)",
    "procguard": "procguard `duplicate_report(snap)` (steady state, as on each TUI refresh)",
    "common e2e": "common, end to end: `psutil.process_iter(['cmdline'])` + resolving as above",
    "procguard e2e": "procguard, end to end: `find_duplicates()` (takes its own incremental snapshot)",
}


def _ours(groups: Iterable[set[int]], ours: set[int]) -> set[frozenset[int]]:
    return {frozenset(g) for g in groups if g & ours}


def _verdict(found: set[frozenset[int]], truth: set[frozenset[int]]) -> tuple[bool, str]:
    hit = len(found & truth)
    false = len(found - truth)
    missed = len(truth - found)
    return found == truth, f"{hit}/{len(truth)} groups found, {false} false, {missed} missed"


def run(load: Load, cfg: Config) -> Section:
    from procguard.core.snapshot import Snapshotter

    sec = Section("duplicates", f"3. Duplicate detection over {cfg.python_procs} Python processes")
    d = dupes_load.start(load, cfg.python_procs)
    try:
        snap = Snapshotter().take()
        fns = methods(snap)
        answers = {k: fn() for k, fn in fns.items()}  # also warms the steady-state caches
        stats = interleaved(fns, cfg.dupes_reps)
    finally:
        load.stop(d.instances + d.workers)
    ours = d.pids
    sec.intro = (
        f"{len(ours)} Python processes of ours ({len(d.instances)} runs + {len(d.workers)} forked "
        f"workers) in a table of {len(snap):,}; mix per kind: {d.counts} (see bench/dupes_load.py). "
        f"Median of {cfg.dupes_reps} runs, interleaved. *Detection*: both sides work from the same "
        "snapshot (the goal's figure). *End to end*: each side also lists the processes itself. Right "
        "answer: exactly the groups the load was built with, among our processes."
    )
    sec.headers = ["method", "median ms", "min–max ms", "speed-up vs common", "right answer?", "detail"]
    verdicts = {}
    for k, s in stats.items():
        base = stats["common e2e" if k.endswith("e2e") else "common"].median
        ok, detail = _verdict(_ours(answers[k], ours), d.truth)
        verdicts[k] = ok
        speed = f"{base / s.median:.1f}×" if s.median > 0 else "–"
        sec.rows.append(
            [LABELS[k], ms(s.median), f"{ms(s.min)}–{ms(s.max)}", speed, "yes" if ok else "**no**", detail]
        )
    n = cfg.python_procs
    for k, base_key, what, goal in (
        ("procguard", "common", "detection, steady state", True),
        ("procguard cold", "common", "detection, fresh identity cache", True),
        (
            "procguard e2e",
            "common e2e",
            "end to end incl. each side's own process listing (reference)",
            False,
        ),
    ):
        st: Stats = stats[k]
        base = stats[base_key].median
        f = base / st.median if st.median > 0 else float("inf")
        sec.goals.append(
            Goal(
                f"duplicates over {n} Python processes, {what}: procguard vs common",
                f"{f:.1f}× faster ({ms(st.median)} vs {ms(base)} ms)",
                f"≥ {GOAL:.0f}×" if goal else "–",
                (f >= GOAL) if goal else None,
            )
        )
    right = all(verdicts[k] for k in ("procguard", "procguard cold", "procguard e2e"))
    sec.goals.append(
        Goal(
            "duplicates: right answer",
            f"procguard {'yes' if right else 'no'}, common {'yes' if verdicts['common'] else 'no'}",
            "procguard right",
            right,
        )
    )
    return sec
