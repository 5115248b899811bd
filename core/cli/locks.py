"""`procguard locks`: file locks held on this machine, and stale procguard lock files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from procguard.core import procfs
from procguard.core.cli._args import cut, output_width, plural
from procguard.core.held_locks import (
    HeldLock,
    clean_stale_locks,
    cleanable_folder_problem,
    list_locks,
    stale_entry,
    stale_lock_files,
)
from procguard.core.lockfile import open_folder, short_command
from procguard.core.sanitize import safe


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "locks",
        help="file locks held on this machine, who holds them, and stale procguard lock files",
        description="List every file lock held on this machine (flock, POSIX, OFD) with its real holders, "
        "then managed lock files that nobody holds (stale).",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON array (keys: path, pid, holders, kind, "
        "mode, managed, stale, holder, metadata, metadata_trusted, metadata_problem; holder is the "
        "lock file's metadata only when it agrees with the real holder)",
    )
    p.add_argument("--managed", action="store_true", help="only procguard lock files")
    p.add_argument(
        "--clean-stale",
        action="store_true",
        help="remove stale procguard lock files (never a held one) and list what was removed",
    )
    p.add_argument(
        "--dir",
        action="append",
        dest="dirs",
        metavar="DIR",
        help="only locks under DIR, and look for stale files there instead of your lock folder (repeatable)",
    )
    p.add_argument("--wide", action="store_true", help="whole rows, never cut to the terminal's width")
    p.set_defaults(func=run)


def _check_dirs(dirs: Sequence[str] | None) -> list[str] | None:
    if dirs is None:
        return None
    from procguard.core.cli import UsageError  # at call time: the dispatcher imports this module

    for d in dirs:
        if not os.path.isdir(d):
            raise UsageError(f"--dir {safe(d)}: not a folder")
    # Held locks are reported by their real path (from /proc/PID/fd): compare like with like.
    return [os.path.realpath(d) for d in dirs]


def _check_clean_dirs(dirs: Sequence[str]) -> list[str]:
    """The --dir folders as given (absolute), each one we may clean in: reached without another user's
    symlink and owned by us (root: by root). Anything else is refused, one line naming the folder."""
    from procguard.core.cli import UsageError

    out: list[str] = []
    for d in dirs:
        try:
            fd = open_folder(d)
        except OSError as e:
            raise UsageError(f"--dir {safe(d)}: {e.strerror or e}; not cleaning there") from None
        try:
            problem = cleanable_folder_problem(os.fstat(fd))
        finally:
            os.close(fd)
        if problem is not None:
            raise UsageError(f"--dir {safe(d)}: {problem}; not cleaning another user's folder")
        out.append(os.path.abspath(d))
    return out


def run(args: argparse.Namespace) -> int:
    dirs = _check_dirs(args.dirs)
    if args.clean_stale:
        # The folders as given, not resolved: a symlink on the way is judged (and refused if another user
        # planted it), never silently followed into a folder the user didn't name.
        clean = None if args.dirs is None else _check_clean_dirs(args.dirs)
        # Read the metadata first: the report names what each removed file was left by.
        before = {p: stale_entry(p) for p in stale_lock_files(clean)}
        removed = clean_stale_locks(paths=list(before))
        entries = [before[p] for p in removed]
        if args.json:
            _print_json(entries)
        elif not entries:
            print("no stale lock files")
        else:
            for e in entries:
                print(f"removed {safe(e.path)}{_was(e)}")
            print(f"removed {plural(len(entries), 'stale lock file')}", file=sys.stderr)
        return 0
    entries = list_locks(dirs, managed_only=args.managed)
    if args.json:
        _print_json(entries)
    else:
        _print_table(entries, output_width(args.wide))
    return 0


def _print_json(entries: Sequence[HeldLock]) -> None:
    json.dump([e.to_dict() for e in entries], sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


def _was(e: HeldLock) -> str:
    if e.holder:
        return f" (left by pid {e.holder.pid}: {e.holder.command(50)})"
    return " (its metadata is not trusted)" if e.metadata else ""


FULL = 1 << 16  # "cut" width for a whole command line: rows are cut to the terminal, not each command


def _real_command(pid: int | None) -> str | None:
    """A holder's full command line from /proc (comm for a kernel thread), terminal-safe; None when gone."""
    if pid is None:
        return None
    argv = procfs.read_cmdline(pid)
    if argv:
        return short_command(argv, FULL)
    st = procfs.read_stat(pid)
    return f"[{safe(st.comm)}]" if st is not None else None


def _rows(e: HeldLock) -> list[list[str]]:
    """One row per holder: PID, KIND, MODE, MANAGED, PATH, COMMAND (the holder's full command, last)."""
    managed = "yes" if e.managed else "-"
    if e.stale:
        left = f"left by pid {e.holder.pid}: {e.holder.command(FULL)}" if e.holder else "-"
        if e.metadata and not e.holder:
            left = "[untrusted metadata]"
        return [["-", "-", "stale", managed, safe(e.path), left]]
    rows = []
    for pid in [e.pid, *(p for p in e.holders if p != e.pid)]:
        what = _real_command(pid)
        if pid == e.pid:
            if e.holder:
                # The file's metadata is believed (the kernel's holder, same start): its own account of itself.
                what = f"{e.holder.command(FULL)} (since {e.holder.since()})"
            elif e.metadata:
                what = f"{what or '?'} [metadata disagrees]"
            if e.waiters:
                what = f"{what or '?'} [{len(e.waiters)} waiting]"
        else:
            what = f"{what or '?'} [shares the lock: an inherited descriptor]"
        rows.append(
            [
                str(pid) if pid is not None else "?",
                e.kind or "-",
                e.mode or "-",
                managed,
                safe(e.path),
                what or "?",
            ]
        )
    return rows


def _print_table(entries: Sequence[HeldLock], width: int | None = None) -> None:
    """One line per holder, its full command last, each line cut to `width` (a terminal's)."""
    if not entries:
        print("no file locks")
        return
    rows = [["PID", "KIND", "MODE", "MANAGED", "PATH", "COMMAND"], *(r for e in entries for r in _rows(e))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print(cut("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1], width))
    held = [e for e in entries if not e.stale]
    stale = len(entries) - len(held)
    counts = [plural(len(held), "lock") + " held"] if held else []
    counts += [plural(stale, "stale lock file")] if stale else []
    print(", ".join(counts), file=sys.stderr)
    for e in entries:
        if e.warning:
            print(f"warning: {safe(e.path)}: {safe(e.warning)}")
        elif e.stale and e.metadata_problem:
            print(f"warning: {safe(e.path)}: lock file metadata ignored: {safe(e.metadata_problem)}")
