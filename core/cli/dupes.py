"""`procguard dupes`: duplicate runs of one job, why a process is (not) counted, and ending all but one run.

Exit status: 0 listed / explained / all ended / previewed; 1 something could not be ended, or nothing was done
because procguard runs inside a distributed launch or scheduler job; 2 bad arguments (an invalid
PROCGUARD_LAUNCHERS / PROCGUARD_NEVER_DUPLICATE entry included), or no such process for --explain.
A terminate without --script only previews (what --dry-run prints) unless --yes is given.
Text output goes through sanitize.safe (command lines, paths and user names come from other processes);
--json keeps the exact values.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from procguard.core import signals
from procguard.core.cli import UsageError
from procguard.core.cli._args import pid_arg, print_json, seconds_arg
from procguard.core.duplicates import (
    DuplicateReport,
    Explanation,
    Instance,
    TerminateReport,
    duplicate_report,
    explain,
    group_json,
    terminate_duplicates,
)
from procguard.core.launchers import SettingError, settings_from_env
from procguard.core.sanitize import safe, safe_join
from procguard.core.snapshot import process_snapshot


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "dupes",
        help="find (and end) duplicate runs of a job; explain a process's identity",
        usage="procguard dupes [--json] [--script PATH] [--explain PID] "
        "[--terminate [--keep oldest|newest] [--grace S] [--dry-run] [--yes] [--all-users]]",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--script", metavar="PATH", help="only this script (symlinks followed)")
    p.add_argument(
        "--explain",
        type=pid_arg,
        metavar="PID",
        help="show PID's identity key (kind and parts) and whether it counts as a run, or why not",
    )
    p.add_argument(
        "--terminate", action="store_true", help="end all but one run per group, each with its process tree"
    )
    p.add_argument(
        "--keep",
        choices=("oldest", "newest"),
        default=None,
        help="which run to keep with --terminate (default oldest)",
    )
    p.add_argument(
        "--grace",
        type=seconds_arg("--grace"),
        default=None,
        metavar="S",
        help="seconds between SIGTERM and SIGKILL with --terminate (default 5)",
    )
    p.add_argument("--dry-run", action="store_true", help="with --terminate: show what would be ended")
    p.add_argument("--yes", action="store_true", help="with --terminate and no --script: really do it")
    p.add_argument(
        "--all-users",
        action="store_true",
        help="with --terminate, as root: also end other users' runs (never without it)",
    )
    p.set_defaults(func=run)


def _since(t: float) -> str:
    fmt = "%H:%M:%S" if time.localtime(t)[:3] == time.localtime()[:3] else "%Y-%m-%d %H:%M"
    return time.strftime(fmt, time.localtime(t))


def _inst_line(inst: Instance, mark: str = " ") -> str:
    extra = (
        f" [{safe(inst.launcher)}, {len(inst.members)} ranks]"
        if inst.launcher
        else (f" [{len(inst.members)} ranks]" if len(inst.members) > 1 else "")
    )
    return (
        f" {mark}{inst.pid:>7} {_since(inst.create_time):>16} {safe(inst.username)[:10]:<10} "
        f"{safe(inst.cwd or '?')}  {safe(inst.command)}{extra}"
    )


def _print_report(report: DuplicateReport) -> None:
    if not report.groups:
        print("no duplicate runs")
    for g in report.groups:
        print(f"{safe(g.identity.display)}: {len(g.instances)} runs ({g.identity.label})")
        print(f"  {'PID':>7} {'SINCE':>16} {'USER':<10} CWD  COMMAND")
        for inst in g.instances:
            print(_inst_line(inst))
    if report.scheduler_managed:
        print("scheduler-managed (never duplicates):")
        for s in report.scheduler_managed:
            print(f"  {s.scheduler} job {safe(s.job_id)}: {safe(s.identity.display)}")
            print(_inst_line(s.instance))


def _check_args(args: argparse.Namespace) -> None:
    if not args.terminate:
        for flag, given in (
            ("--keep", args.keep is not None),
            ("--grace", args.grace is not None),
            ("--dry-run", args.dry_run),
            ("--yes", args.yes),
            ("--all-users", args.all_users),
        ):
            if given:
                raise UsageError(f"{flag} only goes with --terminate")
    if args.explain is not None:
        for flag, given in (("--terminate", args.terminate), ("--script", args.script is not None)):
            if given:
                raise UsageError(f"--explain does not go with {flag}")
    if args.script is not None and not os.path.exists(args.script):
        raise UsageError(f"no such script: {args.script}")


def _terminate_json(rep: TerminateReport) -> dict[str, object]:
    return {
        "dry_run": rep.dry_run,
        "skipped_reason": rep.skipped_reason,
        "groups": [group_json(g) for g in rep.groups],
        "kept": [i.pid for i in rep.kept],
        "ended": [i.pid for i in rep.ended],
        "skipped": [{"pid": i.pid, "username": i.username, "reason": why} for i, why in rep.skipped],
        "would_end": [
            {
                "pid": m.pid,
                "name": m.name,
                "cmdline": list(m.cmdline),
                "username": m.username,
                "protected": m.protected,
            }
            for m in rep.would_end
        ],
        "results": [r.to_json() for r in rep.results],
    }


def _print_terminate(rep: TerminateReport) -> None:
    if rep.skipped_reason:
        print(f"nothing done: {safe(rep.skipped_reason)}")
        return
    if not rep.groups:
        print("no duplicate runs")
        return
    for i in rep.kept:
        print(f"keeping  {_inst_line(i)}")
    for i in rep.ended:
        print(f"{'would end' if rep.dry_run else 'ending  '} {_inst_line(i)}")
    for i, why in rep.skipped:
        print(f"leaving  {_inst_line(i)}  ({safe(why)})")
    if rep.dry_run:
        print(f"would signal {len(rep.would_end)} process(es):")
        for m in rep.would_end:
            note = f"  [refused: {safe(m.protected)}]" if m.protected else ""
            print(f"  {m.pid:>7} {safe(m.username)[:10]:<10} {safe(m.command)}{note}")
    else:
        for r in rep.results:
            print(
                f"  {r.pid:>7} {r.outcome.value:<12} {safe_join(r.cmdline) or safe(r.name)}"
                + (f"  ({safe(r.reason)})" if r.reason else "")
            )
        print(safe(signals.summarize(list(rep.results))))


def _part_text(value: str | tuple[str, ...]) -> str:
    return safe(value) if isinstance(value, str) else "[" + ", ".join(safe(repr(v)) for v in value) + "]"


def _print_explain(e: Explanation) -> None:
    print(f"pid {e.pid} (user {safe(e.username)}): {safe_join(e.cmdline) or '-'}")
    ident = e.identity
    if ident is None:
        print("identity: none")
    else:
        print(f"identity: {safe(ident.label)}")
        for name, value in ident.parts:
            print(f"  {name}: {_part_text(value)}")
        print(f"  key: {safe(ident.key)}")
    if e.counted:
        print(f"counted: yes, {safe(e.reason)}")
    else:
        print(f"counted: no, {safe(e.reason)}")
    if e.runs:
        print(f"runs of this job: {', '.join(str(p) for p in e.runs)}")
    for note in e.notes:
        print(f"note: {safe(note)}")


def _explain(args: argparse.Namespace) -> int:
    try:
        e = explain(args.explain)
    except LookupError:
        raise UsageError(f"no process {args.explain}") from None
    if args.json:
        print_json(e.to_json())
    else:
        _print_explain(e)
    return 0


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    try:
        settings_from_env()  # an invalid entry is a usage error, named, before anything is looked at
    except SettingError as e:
        raise UsageError(str(e)) from None
    if args.explain is not None:
        return _explain(args)
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
    rep = terminate_duplicates(
        keep, args.script, grace, snapshot=process_snapshot(), dry_run=preview, all_users=args.all_users
    )
    if args.json:
        print_json(_terminate_json(rep))
    else:
        _print_terminate(rep)
        if preview and not args.dry_run and rep.ended:
            print("nothing was ended: without --script, pass --yes to end these", file=sys.stderr)
    if rep.skipped_reason:
        return 1
    return 0 if rep.ok else 1
