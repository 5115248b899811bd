"""`procguard dupes`: duplicate runs of one script, and ending all but one of each.

Exit status: 0 listed / all ended / previewed; 1 something could not be ended, or nothing was done because
procguard runs inside a distributed launch or scheduler job; 2 bad arguments.
A terminate without --script only previews (what --dry-run prints) unless --yes is given.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from procguard.core import signals
from procguard.core.cli import UsageError
from procguard.core.cli._args import one_line, print_json, seconds_arg
from procguard.core.duplicates import (
    DuplicateReport,
    Instance,
    TerminateReport,
    duplicate_report,
    group_json,
    terminate_duplicates,
)
from procguard.core.snapshot import process_snapshot


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("dupes", help="find (and end) duplicate runs of a Python script",
                       usage="procguard dupes [--json] [--script PATH] "
                       "[--terminate [--keep oldest|newest] [--grace S] [--dry-run] [--yes]]")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--script", metavar="PATH", help="only this script (symlinks followed)")
    p.add_argument("--terminate", action="store_true",
                   help="end all but one run per group, each with its process tree")
    p.add_argument("--keep", choices=("oldest", "newest"), default=None,
                   help="which run to keep with --terminate (default oldest)")
    p.add_argument("--grace", type=seconds_arg("--grace"), default=None, metavar="S",
                   help="seconds between SIGTERM and SIGKILL with --terminate (default 5)")
    p.add_argument("--dry-run", action="store_true", help="with --terminate: show what would be ended")
    p.add_argument("--yes", action="store_true", help="with --terminate and no --script: really do it")
    p.set_defaults(func=run)


def _since(t: float) -> str:
    fmt = "%H:%M:%S" if time.localtime(t)[:3] == time.localtime()[:3] else "%Y-%m-%d %H:%M"
    return time.strftime(fmt, time.localtime(t))


def _inst_line(inst: Instance, mark: str = " ") -> str:
    extra = f" [{inst.launcher}, {len(inst.members)} ranks]" if inst.launcher else (
        f" [{len(inst.members)} ranks]" if len(inst.members) > 1 else "")
    return (f" {mark}{inst.pid:>7} {_since(inst.create_time):>16} {inst.username[:10]:<10} "
            f"{inst.cwd or '?'}  {one_line(inst.command)}{extra}")


def _print_report(report: DuplicateReport) -> None:
    if not report.groups:
        print("no duplicate runs")
    for g in report.groups:
        print(f"{g.identity.display}: {len(g.instances)} runs")
        print(f"  {'PID':>7} {'SINCE':>16} {'USER':<10} CWD  COMMAND")
        for inst in g.instances:
            print(_inst_line(inst))
    if report.scheduler_managed:
        print("scheduler-managed (never duplicates):")
        for s in report.scheduler_managed:
            print(f"  {s.scheduler} job {s.job_id}: {s.identity.display}")
            print(_inst_line(s.instance))


def _check_args(args: argparse.Namespace) -> None:
    if not args.terminate:
        for flag, given in (("--keep", args.keep is not None), ("--grace", args.grace is not None),
                            ("--dry-run", args.dry_run), ("--yes", args.yes)):
            if given:
                raise UsageError(f"{flag} only goes with --terminate")
    if args.script is not None and not os.path.exists(args.script):
        raise UsageError(f"no such script: {args.script}")


def _terminate_json(rep: TerminateReport) -> dict[str, object]:
    return {
        "dry_run": rep.dry_run,
        "skipped_reason": rep.skipped_reason,
        "groups": [group_json(g) for g in rep.groups],
        "kept": [i.pid for i in rep.kept],
        "ended": [i.pid for i in rep.ended],
        "skipped": [{"pid": i.pid, "reason": why} for i, why in rep.skipped],
        "would_end": [{"pid": m.pid, "name": m.name, "cmdline": list(m.cmdline), "username": m.username,
                       "protected": m.protected} for m in rep.would_end],
        "results": [r.to_json() for r in rep.results],
    }


def _print_terminate(rep: TerminateReport) -> None:
    if rep.skipped_reason:
        print(f"nothing done: {rep.skipped_reason}")
        return
    if not rep.groups:
        print("no duplicate runs")
        return
    for i in rep.kept:
        print(f"keeping  {_inst_line(i)}")
    for i in rep.ended:
        print(f"{'would end' if rep.dry_run else 'ending  '} {_inst_line(i)}")
    for i, why in rep.skipped:
        print(f"leaving  {_inst_line(i)}  ({why})")
    if rep.dry_run:
        print(f"would signal {len(rep.would_end)} process(es):")
        for m in rep.would_end:
            note = f"  [refused: {m.protected}]" if m.protected else ""
            print(f"  {m.pid:>7} {m.username[:10]:<10} {one_line(m.command)}{note}")
    else:
        for r in rep.results:
            print(f"  {r.pid:>7} {r.outcome.value:<12} {one_line(' '.join(r.cmdline)) or r.name}"
                  + (f"  ({r.reason})" if r.reason else ""))
        print(signals.summarize(list(rep.results)))


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if not args.terminate:
        report = duplicate_report(script=args.script)
        if args.json:
            print_json([group_json(g) for g in report.groups])
        else:
            _print_report(report)
        return 0
    keep = args.keep or "oldest"
    grace = 5.0 if args.grace is None else args.grace
    preview = args.dry_run or (args.script is None and not args.yes)
    rep = terminate_duplicates(keep, args.script, grace, snapshot=process_snapshot(), dry_run=preview)
    if args.json:
        print_json(_terminate_json(rep))
    else:
        _print_terminate(rep)
        if preview and not args.dry_run and rep.ended:
            print("nothing was ended: without --script, pass --yes to end these", file=sys.stderr)
    if rep.skipped_reason:
        return 1
    return 0 if rep.ok else 1
