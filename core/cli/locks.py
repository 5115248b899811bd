"""`procguard locks`: file locks held on this machine, and stale procguard lock files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from procguard.core.held_locks import HeldLock, clean_stale_locks, list_locks, stale_lock_files
from procguard.core.lockfile import read_holder


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "locks", help="file locks held on this machine, who holds them, and stale procguard lock files",
        description="List every file lock held on this machine (flock, POSIX, OFD) with its real holders, "
        "then managed lock files that nobody holds (stale).")
    p.add_argument("--json", action="store_true", help="print a JSON array (keys: path, pid, holders, kind, "
                   "mode, managed, stale, holder)")
    p.add_argument("--managed", action="store_true", help="only procguard lock files")
    p.add_argument("--clean-stale", action="store_true",
                   help="remove stale procguard lock files (never a held one) and list what was removed")
    p.add_argument("--dir", action="append", dest="dirs", metavar="DIR",
                   help="only locks under DIR, and look for stale files there instead of your lock folder "
                   "(repeatable)")
    p.set_defaults(func=run)


def _check_dirs(dirs: Sequence[str] | None) -> list[str] | None:
    if dirs is None:
        return None
    from procguard.core.cli import UsageError  # at call time: the dispatcher imports this module

    for d in dirs:
        if not os.path.isdir(d):
            raise UsageError(f"--dir {d}: not a folder")
    # Held locks are reported by their real path (from /proc/PID/fd): compare like with like.
    return [os.path.realpath(d) for d in dirs]


def run(args: argparse.Namespace) -> int:
    dirs = _check_dirs(args.dirs)
    if args.clean_stale:
        # Read the metadata first: the report names what each removed file was left by.
        before = {p: read_holder(p, wait=0) for p in stale_lock_files(dirs)}
        removed = clean_stale_locks(paths=list(before))
        entries = [HeldLock(path=str(p), pid=None, holders=(), kind=None, mode=None, managed=True,
                            holder=before.get(p), stale=True) for p in removed]
        if args.json:
            _print_json(entries)
        elif not entries:
            print("no stale lock files")
        else:
            for e in entries:
                print(f"removed {e.path}{_was(e)}")
        return 0
    entries = list_locks(dirs, managed_only=args.managed)
    if args.json:
        _print_json(entries)
    else:
        _print_table(entries)
    return 0


def _print_json(entries: Sequence[HeldLock]) -> None:
    json.dump([e.to_dict() for e in entries], sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


def _was(e: HeldLock) -> str:
    return f" (left by pid {e.holder.pid}: {e.holder.command(50)})" if e.holder else ""


def _comm(pid: int | None) -> str:
    if pid is None:
        return "?"
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _row(e: HeldLock) -> list[str]:
    if e.stale:
        return ["-", "-", "stale", "-", "yes", f"left by pid {e.holder.pid}: {e.holder.command(40)}"
                if e.holder else "-", e.path]
    others = ",".join(str(p) for p in e.holders if p != e.pid) or "-"
    what = e.holder.command(40) + f" (since {e.holder.since()})" if e.holder else _comm(e.pid)
    if e.waiters:
        what += f" [{len(e.waiters)} waiting]"
    return [str(e.pid) if e.pid is not None else "?", others, e.kind or "-", e.mode or "-",
            "yes" if e.managed else "-", what, e.path]


def _print_table(entries: Sequence[HeldLock]) -> None:
    if not entries:
        print("no file locks")
        return
    rows = [["PID", "SHARED", "KIND", "MODE", "MANAGED", "COMMAND", "PATH"], *map(_row, entries)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    for e in entries:
        if e.warning:
            print(f"warning: {e.path}: {e.warning}")
